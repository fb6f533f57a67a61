// Greets the `name` in a JSON event: {"name":"evoke"} answers
// {"greeting": "Hello, evoke!", "greeted": 1, "attempt": 1}.
//
// `greeted` counts the events this instance has handled: module-scope state
// lives as long as the instance, so warm calls see it grow. {"fail": "why"}
// throws: a function error, retried and finally dead-lettered, with its
// stack in the function's log. {"fetch": "https://..."} calls that address
// with fetch() (allowed only by the function's `grants = { http = [...] }`)
// and answers {"status": 200, "body": "..."}.

import { handler, json, log } from './evoke.js';

let greeted = 0;

async function fetched(url) {
  const response = await fetch(url);
  return json({ status: response.status, body: await response.text() });
}

export const { init, handle } = handler((event) => {
  const data = event.json();
  if (data.fetch !== undefined) {
    return fetched(data.fetch);
  }
  if (data.fail !== undefined) {
    throw new Error(`asked to fail: ${data.fail}`);
  }
  const name = data.name ?? 'world';
  greeted += 1;
  log.info(`greeting ${name} (attempt ${event.attempt})`);
  return json({ greeting: `Hello, ${name}!`, greeted, attempt: event.attempt });
});
