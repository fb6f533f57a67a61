// Greets the `name` in a JSON event: {"name":"evoke"} answers
// {"greeting": "Hello, evoke!", "greeted": 1, "attempt": 1}.
//
// `greeted` counts the events this instance has handled: module-scope state
// lives as long as the instance, so warm calls see it grow. {"fail": "why"}
// throws: a function error, retried and finally dead-lettered, with its
// stack in the function's log.

import { handler, json, log } from './evoke.js';

let greeted = 0;

export const { init, handle } = handler((event) => {
  const data = event.json();
  if (data.fail !== undefined) {
    throw new Error(`asked to fail: ${data.fail}`);
  }
  const name = data.name ?? 'world';
  greeted += 1;
  log.info(`greeting ${name} (attempt ${event.attempt})`);
  return json({ greeting: `Hello, ${name}!`, greeted, attempt: event.attempt });
});
