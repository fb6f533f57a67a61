// evoke's JavaScript SDK: write a function as one `handle(event)`.
//
// A thin layer over the bindings componentize-js generates from evoke's WIT
// world (wit/function.wit):
//
//   import { handler, log } from './evoke.js';
//
//   export const { init, handle } = handler((event) => {
//     const name = event.json().name ?? 'world';
//     log.info(`greeting ${name}`);
//     return `Hello, ${name}!`;
//   });
//
// The handler (sync, or async to await fetch()) returns a string
// (text/plain), a Uint8Array (application/octet-stream), any other value
// (JSON), undefined (an empty body), or an output made with `text`, `json` or `output` (to set the
// status and headers a webhook or sync caller gets). A thrown error is a
// function error: its message is the error, its stack goes to the
// function's log, and evoke retries it (async) and finally dead-letters it.
//
// State: module-scope variables live as long as the instance (warm calls
// share them; a new instance starts over).

import * as host from 'evoke:function/host@0.2.0';
import * as objectsApi from 'evoke:function/objects@0.2.0';

/** Objects in S3-compatible stores, as the function's grants allow. */
export const objects = objectsApi;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();
const UNSET = Symbol('unset');

/** One event, modelled on CloudEvents 1.0. */
export class Event {
  constructor(raw) {
    this.id = raw.id;
    this.source = raw.source;
    this.type = raw.type;
    this.specversion = raw.specversion;
    this.subject = raw.subject;
    this.time = raw.time;
    this.datacontenttype = raw.datacontenttype;
    /** The payload, as bytes (Uint8Array). */
    this.data = raw.data;
    /** Extension attributes by (lower-case) name, e.g. `evoketrigger`. */
    this.extensions = new Map(raw.extensions);
    this._json = UNSET;
  }

  /** 1 on the first attempt, 2 on the first retry, ... */
  get attempt() {
    const n = Number.parseInt(this.extensions.get('evokeattempt') ?? '1', 10);
    return Number.isNaN(n) ? 1 : n;
  }

  /** The data as UTF-8 text. */
  text() {
    return fromUtf8.decode(this.data);
  }

  /** The data parsed as JSON (once); an empty payload is `{}`. */
  json() {
    if (this._json === UNSET) {
      const text = this.text();
      this._json = text.trim() === '' ? {} : JSON.parse(text);
    }
    return this._json;
  }
}

/** An output with everything set: `status` and `headers` reach HTTP callers. */
export function output(body, contentType, status, headers) {
  return {
    body: typeof body === 'string' ? utf8.encode(body) : body,
    contentType,
    status,
    headers: Object.entries(headers ?? {}),
  };
}

/** A text/plain output. */
export function text(body, status, headers) {
  return output(body, 'text/plain; charset=utf-8', status, headers);
}

/** An application/json output. */
export function json(value, status, headers) {
  return output(JSON.stringify(value), 'application/json', status, headers);
}

function toOutput(value) {
  if (value === undefined || value === null) return output(new Uint8Array());
  if (typeof value === 'string') return text(value);
  if (value instanceof Uint8Array) return output(value, 'application/octet-stream');
  if (typeof value === 'object' && value.body instanceof Uint8Array && Array.isArray(value.headers)) return value;
  return json(value);
}

/** Lines in the function's log (`evoke logs FUNCTION`), tagged with the invocation. */
export const log = {
  trace: (message) => host.log('trace', String(message)),
  debug: (message) => host.log('debug', String(message)),
  info: (message) => host.log('info', String(message)),
  warn: (message) => host.log('warn', String(message)),
  error: (message) => host.log('error', String(message)),
};

function failure(what, e) {
  const name = e?.name ?? 'Error';
  const message = e?.message ?? String(e);
  log.error(`${what} threw ${name}: ${message}${e?.stack ? `\n${e.stack}` : ''}`);
  return `${name}: ${message}`;
}

/**
 * Makes the component's exports from a handler (and an optional
 * initializer, run once per instance before its first event):
 * `export const { init, handle } = handler(fn, { init: setup });`
 */
export function handler(fn, options = {}) {
  return {
    init() {
      if (!options.init) return;
      try {
        options.init();
      } catch (e) {
        // A thrown string is the export's `err`.
        throw failure('init', e);
      }
    },
    handle(raw) {
      let value;
      try {
        value = fn(new Event(raw));
      } catch (e) {
        throw failure('handle', e);
      }
      if (value instanceof Promise) {
        // An async handler (e.g. one that awaits fetch()): componentize-js
        // runs the event loop until the promise settles.
        return value.then(toOutput, (e) => {
          throw failure('handle', e);
        });
      }
      return toOutput(value);
    },
  };
}
