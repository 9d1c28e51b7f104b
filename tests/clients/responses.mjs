#!/usr/bin/env node
// One streamed turn through the gateway with Chatbox's "OpenAI Responses" provider:
// `@ai-sdk/openai`'s `.responses()` model, which posts to {baseURL}/responses, always with
// `store: false` (Chatbox keeps the conversation itself). Driven by tests/test_clients.py;
// prints one JSON object on stdout:
//   {"text", "finishReason", "usage", "responseId", "urls", "bodies"}
// or {"error", "status"?, "urls", "bodies"} with exit code 1.
//
//   node responses.mjs --base-url http://127.0.0.1:8000/v1 --api-key KEY --model gpt-4o
//     [--prompt TEXT] [--no-stream]

import { createOpenAI } from '@ai-sdk/openai'
import { generateText, streamText } from 'ai'

function parseArgs(argv) {
  const out = { prompt: 'hello from chatbox' }
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i]
    if (name === '--no-stream') {
      out.noStream = true
      continue
    }
    if (!name.startsWith('--') || i + 1 >= argv.length) throw new Error(`bad argument ${name}`)
    out[name.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = argv[++i]
  }
  for (const required of ['baseUrl', 'apiKey', 'model']) {
    if (!out[required]) throw new Error(`--${required} is required`)
  }
  return out
}

const args = parseArgs(process.argv.slice(2))
const urls = []
const bodies = []

// Record each URL and JSON body the library sends.
async function recordingFetch(input, init) {
  urls.push(typeof input === 'string' ? input : input instanceof URL ? input.href : input.url)
  if (init && typeof init.body === 'string') bodies.push(JSON.parse(init.body))
  return globalThis.fetch(input, init)
}

const provider = createOpenAI({ apiKey: args.apiKey, baseURL: args.baseUrl, fetch: recordingFetch })
const request = {
  model: provider.responses(args.model),
  prompt: args.prompt,
  providerOptions: { openai: { store: false } },
  maxRetries: 0,
}

try {
  let result
  if (args.noStream) {
    const r = await generateText(request)
    result = { text: r.text, finishReason: r.finishReason, usage: r.usage, meta: r.providerMetadata }
  } else {
    let streamError = null
    const r = streamText({ ...request, onError: ({ error }) => { streamError = error } })
    let text = ''
    for await (const delta of r.textStream) text += delta
    if (streamError) throw streamError
    result = {
      text,
      finishReason: await r.finishReason,
      usage: await r.usage,
      meta: await r.providerMetadata,
    }
  }
  const { meta, ...rest } = result
  const responseId = meta?.openai?.responseId ?? null
  console.log(JSON.stringify({ ...rest, responseId, urls, bodies }))
} catch (error) {
  const status = error?.statusCode ?? error?.cause?.statusCode
  console.log(JSON.stringify({ error: String(error?.message ?? error), status, urls, bodies }))
  process.exit(1)
}
