#!/usr/bin/env node
// One chat through the gateway with Chatbox's own client libraries (the Vercel AI SDK):
// `@ai-sdk/openai-compatible` is what Chatbox's custom provider uses, `@ai-sdk/azure` its
// Azure provider. Driven by tests/test_clients.py; prints one JSON object on stdout:
//   {"text", "finishReason", "usage", "urls": [every URL the library fetched], "models"?}
// or {"error", "status"?, "urls"} with exit code 1.
//
//   node chat.mjs --provider openai-compatible --base-url http://127.0.0.1:8000/v1 \
//     --api-key KEY --model gpt-4o [--models] [--include-usage] [--no-stream]
//   node chat.mjs --provider azure --base-url http://127.0.0.1:8000/openai \
//     --api-key KEY --model gpt-4o [--api-version V] [--deployment-urls]
//     [--connect http://127.0.0.1:8000]
//
// --connect: the library is configured with --base-url (e.g. an Azure-looking host such as
// http://gw.openai.azure.com:8000/openai, for which @ai-sdk/azure builds Azure's own URL
// forms), but every request is sent to this origin instead; path and query are unchanged.

import { createAzure } from '@ai-sdk/azure'
import { createOpenAICompatible } from '@ai-sdk/openai-compatible'
import { generateText, streamText } from 'ai'

function parseArgs(argv) {
  const flags = new Set(['--models', '--include-usage', '--no-stream', '--deployment-urls'])
  const out = {}
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i]
    if (!name.startsWith('--')) throw new Error(`unexpected argument ${name}`)
    const key = name.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase())
    if (flags.has(name)) out[key] = true
    else if (i + 1 < argv.length) out[key] = argv[++i]
    else throw new Error(`${name} needs a value`)
  }
  for (const required of ['provider', 'baseUrl', 'apiKey', 'model']) {
    if (!out[required]) throw new Error(`--${required} is required`)
  }
  return out
}

const args = parseArgs(process.argv.slice(2))
const urls = []

// Record each URL the library builds; with --connect, send it to the real origin.
async function recordingFetch(input, init) {
  const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url
  urls.push(url)
  let target = url
  if (args.connect) {
    const parsed = new URL(url)
    target = args.connect.replace(/\/+$/, '') + parsed.pathname + parsed.search
  }
  return globalThis.fetch(target, init)
}

function languageModel() {
  if (args.provider === 'openai-compatible') {
    // as Chatbox's custom provider: name, apiKey (sent as Bearer), baseURL = its API host
    const provider = createOpenAICompatible({
      name: 'chatbox-custom',
      apiKey: args.apiKey,
      baseURL: args.baseUrl,
      includeUsage: Boolean(args.includeUsage),
      fetch: recordingFetch,
    })
    return provider.chatModel(args.model)
  }
  if (args.provider === 'azure') {
    // as Chatbox's Azure provider: chat completions, the key sent as `api-key`
    const provider = createAzure({
      apiKey: args.apiKey,
      baseURL: args.baseUrl,
      apiVersion: args.apiVersion,
      useDeploymentBasedUrls: Boolean(args.deploymentUrls),
      fetch: recordingFetch,
    })
    return provider.chat(args.model)
  }
  throw new Error(`unknown --provider ${args.provider}`)
}

// Chatbox's "Fetch models": GET {apiHost}/models with a Bearer key.
async function listModels() {
  const response = await recordingFetch(`${args.baseUrl.replace(/\/+$/, '')}/models`, {
    headers: { Authorization: `Bearer ${args.apiKey}` },
  })
  const body = await response.json()
  if (!response.ok || !Array.isArray(body.data)) {
    throw Object.assign(new Error(`models: ${JSON.stringify(body)}`), { statusCode: response.status })
  }
  return body.data.map((m) => m.id)
}

async function chat() {
  const request = {
    model: languageModel(),
    messages: [{ role: 'user', content: 'hello from chatbox' }],
    maxRetries: 0,
  }
  if (args.noStream) {
    const result = await generateText(request)
    return { text: result.text, finishReason: result.finishReason, usage: result.usage }
  }
  const result = streamText({ ...request, onError: () => {} }) // errors come as 'error' parts
  let text = ''
  let deltas = 0
  for await (const part of result.fullStream) {
    if (part.type === 'text-delta') {
      text += part.text
      deltas += 1
    } else if (part.type === 'error') {
      throw part.error
    }
  }
  return { text, deltas, finishReason: await result.finishReason, usage: await result.usage }
}

try {
  const out = {}
  if (args.models) out.models = await listModels()
  Object.assign(out, await chat())
  out.urls = urls
  process.stdout.write(`${JSON.stringify(out)}\n`)
} catch (err) {
  const status = err?.statusCode ?? err?.lastError?.statusCode
  const message = err instanceof Error ? err.message : JSON.stringify(err)
  process.stdout.write(`${JSON.stringify({ error: message, status, urls })}\n`)
  process.exitCode = 1
}
