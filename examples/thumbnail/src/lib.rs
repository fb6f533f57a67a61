//! Thumbnails for uploaded images: an `s3` trigger on the uploads bucket runs
//! this function for every new JPEG or PNG; it reads the object, scales it to
//! fit in `THUMB_SIZE` pixels (default 128, aspect ratio kept) and writes the
//! thumbnail, in the same format, under the same key to `THUMB_BUCKET`
//! (`STORE/BUCKET`, default `local/thumbs`), prefixed by `THUMB_PREFIX`
//! (default none).
//!
//! The function's grants must allow reading the uploads bucket and writing
//! the thumbnails bucket (see the `thumbnail` function in `evoke.toml`).

use std::io::Cursor;

use evoke_sdk::objects::Bucket;
use evoke_sdk::{Event, Function, Output};
use image::{ImageFormat, ImageReader};

struct Thumbnail;

#[derive(serde::Serialize)]
struct Made {
    source: String,
    thumbnail: String,
    width: u32,
    height: u32,
    bytes: usize,
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

impl Function for Thumbnail {
    fn handle(event: Event) -> Result<Output, String> {
        let object = event
            .object()
            .ok_or("not an object event: bind this function to an s3 trigger")?;
        let size: u32 = setting("THUMB_SIZE", "128")
            .parse()
            .map_err(|_| "THUMB_SIZE must be a number of pixels")?;
        let target = setting("THUMB_BUCKET", "local/thumbs");
        let key = format!("{}{}", setting("THUMB_PREFIX", ""), object.key);
        let (store, bucket) = target.split_once('/').ok_or("THUMB_BUCKET must be STORE/BUCKET")?;

        let original = object.get()?;
        let reader = ImageReader::new(Cursor::new(&original))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        let format = match reader.format() {
            Some(f @ (ImageFormat::Jpeg | ImageFormat::Png)) => f,
            Some(other) => return Err(format!("{} is {other:?}, not a JPEG or PNG", object.key)),
            None => return Err(format!("{} is not a JPEG or PNG image", object.key)),
        };
        let image = reader
            .decode()
            .map_err(|e| format!("cannot decode {}: {e}", object.key))?;
        let thumb = image.thumbnail(size, size);
        let mut out = Cursor::new(Vec::new());
        thumb.write_to(&mut out, format).map_err(|e| e.to_string())?;
        let body = out.into_inner();
        let content_type = match format {
            ImageFormat::Png => "image/png",
            _ => "image/jpeg",
        };
        Bucket::new(store, bucket).put(&key, &body, Some(content_type))?;
        evoke_sdk::info(format!(
            "{}: {}x{} -> {}x{}",
            object.key,
            image.width(),
            image.height(),
            thumb.width(),
            thumb.height()
        ));
        Output::json(&Made {
            source: format!("{}/{}/{}", object.bucket.store, object.bucket.name, object.key),
            thumbnail: format!("{target}/{key}"),
            width: thumb.width(),
            height: thumb.height(),
            bytes: body.len(),
        })
    }
}

evoke_sdk::function!(Thumbnail);
