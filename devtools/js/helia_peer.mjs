#!/usr/bin/env node
// A helia node on 127.0.0.1 for the Bitswap interop tests (sdk/tests/storage/test_helia_interop.py).
//
// TCP, Noise, Yamux, identify (so helia learns which peers speak Bitswap) and helia's own
// Bitswap; no DHT, no discovery and no HTTP gateways or delegated routers: nothing leaves
// 127.0.0.1. BLAKE3 (multihash 0x1e) is registered through helia's `hashers` option, since
// helia knows only the sha2 family out of the box.
//
// On start it prints one JSON line: {"peer_id": "...", "addrs": ["/ip4/127.0.0.1/tcp/N/p2p/..."]}.
// Then it reads commands, one JSON object a line, and answers each with one JSON line, in order:
//   {"put": "<hex>", "hash": "blake3"|"sha2-256"}  -> {"cid": "<CIDv1 raw, base32>"}
//   {"dial": "<multiaddr>"}                        -> {"ok": true}
//   {"get": "<cid>", "timeout_ms": 20000}          -> {"hex": "<bytes>"}
// A failed command answers {"error": "..."}. End of input stops the node.

import { createInterface } from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { blake3 } from '@noble/hashes/blake3.js'
import { createHelia } from 'helia'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { from } from 'multiformats/hashes/hasher'
import { sha256 } from 'multiformats/hashes/sha2'

// helia 7's stack is written for Node.js 22 (it calls Promise.withResolvers); this machine has 20.
Promise.withResolvers ??= function withResolvers () {
  let resolve, reject
  const promise = new Promise((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}

const blake3Hasher = from({ name: 'blake3', code: 0x1e, encode: (input) => blake3(input) })
const HASHERS = { blake3: blake3Hasher, 'sha2-256': sha256 }

const helia = createHelia({
  hashers: [blake3Hasher],
  http: { delegatedRouters: [], recursiveGateways: [] },
  libp2p: {
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [],
    services: { identify: identify() }
  }
})
await helia.start()

function say (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function fromHex (hex) {
  return Uint8Array.from(Buffer.from(hex, 'hex'))
}

async function run (command) {
  if (command.put !== undefined) {
    const hasher = HASHERS[command.hash ?? 'blake3']
    if (hasher === undefined) throw new Error(`unknown hash ${command.hash}`)
    const bytes = fromHex(command.put)
    const cid = CID.createV1(raw.code, await hasher.digest(bytes))
    await helia.blockstore.put(cid, bytes)
    return { cid: cid.toString() }
  }
  if (command.dial !== undefined) {
    await helia.libp2p.dial(multiaddr(command.dial), { signal: AbortSignal.timeout(10000) })
    return { ok: true }
  }
  if (command.get !== undefined) {
    const cid = CID.parse(command.get)
    const signal = AbortSignal.timeout(command.timeout_ms ?? 20000)
    const chunks = []
    for await (const chunk of helia.blockstore.get(cid, { signal })) chunks.push(chunk)
    return { hex: Buffer.concat(chunks).toString('hex') }
  }
  throw new Error(`unknown command ${JSON.stringify(Object.keys(command))}`)
}

say({
  peer_id: helia.libp2p.peerId.toString(),
  addrs: helia.libp2p.getMultiaddrs().map((a) => a.toString())
})

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  if (line.trim() === '') continue
  try {
    say(await run(JSON.parse(line)))
  } catch (err) {
    say({ error: `${err.name}: ${err.message}` })
  }
}
await helia.stop()
process.exit(0)
