// Drives a SmolVM server with the unmodified e2b SDK. Run by sdk_test.go
// with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set; prints one line per
// check: "ok NAME [detail]" or "FAIL NAME: error", then "done".
import assert from 'node:assert/strict'
import { Sandbox, CommandExitError } from 'e2b'

const template = process.env.E2B_TEST_TEMPLATE || 'default'
const results = []
async function check(name, fn) {
  try {
    const detail = await fn()
    console.log(`ok ${name}${detail === undefined ? '' : ' ' + JSON.stringify(detail)}`)
  } catch (e) {
    console.log(`FAIL ${name}: ${(e && e.stack || String(e)).replace(/\n/g, ' | ')}`)
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

let sbx
await check('create', async () => {
  sbx = await Sandbox.create(template, { timeoutMs: 600_000, metadata: { suite: 'e2b-sdk', run: process.env.E2B_TEST_RUN || '' }, envs: { SANDBOX_WIDE: 'yes' } })
  assert.match(sbx.sandboxId, /^[a-z0-9][a-z0-9_-]*$/)
})
if (!sbx) { console.log('done'); process.exit(0) }

await check('run stdout stderr exit', async () => {
  const r = await sbx.commands.run('echo hello; echo oops >&2')
  assert.equal(r.stdout, 'hello\n')
  assert.equal(r.stderr, 'oops\n')
  assert.equal(r.exitCode, 0)
})
await check('run nonzero raises', async () => {
  await assert.rejects(sbx.commands.run('echo partial; exit 3'), (e) => {
    assert.ok(e instanceof CommandExitError, 'CommandExitError expected, got ' + e)
    assert.equal(e.exitCode, 3)
    assert.equal(e.stdout, 'partial\n')
    return true
  })
})
await check('run envs cwd user', async () => {
  const r = await sbx.commands.run('echo $FOO $SANDBOX_WIDE; pwd; id -un', { envs: { FOO: 'bar' }, cwd: '/tmp' })
  assert.equal(r.stdout, 'bar yes\n/tmp\nuser\n')
  const root = await sbx.commands.run('id -u; pwd', { user: 'root' })
  assert.equal(root.stdout, '0\n/root\n')
})
await check('run streaming callbacks', async () => {
  const seen = []
  const t0 = Date.now()
  let firstAt = 0
  const r = await sbx.commands.run('for i in 1 2 3; do echo line$i; sleep 0.5; done; echo e >&2', {
    onStdout: (d) => { if (!firstAt) firstAt = Date.now(); seen.push(d) },
    onStderr: (d) => seen.push('ERR:' + d),
  })
  assert.equal(r.stdout, 'line1\nline2\nline3\n')
  assert.ok(seen.join('').includes('line1') && seen.join('').includes('ERR:e'), JSON.stringify(seen))
  assert.ok(firstAt - t0 < Date.now() - t0 - 500, 'first output arrived only at the end')
})
await check('run timeoutMs', async () => {
  const t0 = Date.now()
  await assert.rejects(sbx.commands.run('sleep 30', { timeoutMs: 1500 }))
  assert.ok(Date.now() - t0 < 20_000, 'timeout not applied')
})
await check('background server list connect kill', async () => {
  await sbx.files.write('/tmp/www/index.html', 'served by smolvm\n')
  const h = await sbx.commands.run('cd /tmp/www && exec python3 -m http.server 8000', { background: true, timeoutMs: 0 })
  assert.ok(h.pid > 0)
  let body = ''
  for (let i = 0; i < 60 && !body.includes('served'); i++) {
    await sleep(500)
    body = (await sbx.commands.run('curl -s http://127.0.0.1:8000/index.html || true')).stdout
  }
  assert.equal(body, 'served by smolvm\n')
  const list = await sbx.commands.list()
  assert.ok(list.some((p) => p.pid === h.pid && p.cmd === '/bin/bash'), JSON.stringify(list))
  const c = await sbx.commands.connect(h.pid)
  assert.equal(c.pid, h.pid)
  assert.equal(await sbx.commands.kill(h.pid), true)
  await assert.rejects(c.wait())
  const after = await sbx.commands.list()
  assert.ok(!after.some((p) => p.pid === h.pid), 'still listed after kill')
  assert.equal(await sbx.commands.kill(h.pid), false)
})
await check('sendStdin closeStdin', async () => {
  const h = await sbx.commands.run('cat', { background: true, stdin: true })
  await sbx.commands.sendStdin(h.pid, 'first\n')
  await sbx.commands.sendStdin(h.pid, 'second\n')
  await sbx.commands.closeStdin(h.pid)
  const r = await h.wait()
  assert.equal(r.stdout, 'first\nsecond\n')
})
await check('files text', async () => {
  const info = await sbx.files.write('/tmp/e2b/text.txt', 'héllo\nworld\n')
  assert.equal(info.path, '/tmp/e2b/text.txt')
  assert.equal(await sbx.files.read('/tmp/e2b/text.txt'), 'héllo\nworld\n')
  await sbx.files.write('notes.txt', 'relative\n')
  assert.equal((await sbx.commands.run('cat /home/user/notes.txt; stat -c %U /home/user/notes.txt')).stdout, 'relative\nuser\n')
})
await check('files binary 256', async () => {
  const all = new Uint8Array(256 * 4)
  for (let i = 0; i < all.length; i++) all[i] = i % 256
  await sbx.files.write('/tmp/e2b/bytes.bin', all.buffer)
  const back = await sbx.files.read('/tmp/e2b/bytes.bin', { format: 'bytes' })
  assert.deepEqual(Buffer.from(back), Buffer.from(all))
  const sum = await sbx.commands.run('sha256sum /tmp/e2b/bytes.bin | cut -c1-64')
  const { createHash } = await import('node:crypto')
  assert.equal(sum.stdout.trim(), createHash('sha256').update(all).digest('hex'))
})
await check('files list exists makeDir rename remove getInfo', async () => {
  assert.equal(await sbx.files.makeDir('/tmp/e2b/dir/sub'), true)
  assert.equal(await sbx.files.makeDir('/tmp/e2b/dir/sub'), false)
  const names = (await sbx.files.list('/tmp/e2b')).map((e) => `${e.name}:${e.type}`).sort()
  assert.deepEqual(names, ['bytes.bin:file', 'dir:dir', 'text.txt:file'])
  assert.equal(await sbx.files.exists('/tmp/e2b/text.txt'), true)
  assert.equal(await sbx.files.exists('/tmp/e2b/nope'), false)
  const moved = await sbx.files.rename('/tmp/e2b/text.txt', '/tmp/e2b/dir/moved.txt')
  assert.equal(moved.path, '/tmp/e2b/dir/moved.txt')
  const info = await sbx.files.getInfo('/tmp/e2b/bytes.bin')
  assert.equal(info.size, 1024)
  assert.equal(info.type, 'file')
  assert.equal(info.name, 'bytes.bin')
  await sbx.files.remove('/tmp/e2b/dir')
  assert.equal(await sbx.files.exists('/tmp/e2b/dir/moved.txt'), false)
  await assert.rejects(sbx.files.read('/tmp/e2b/dir/moved.txt'))
})
await check('watchDir', async () => {
  await sbx.files.makeDir('/tmp/watched')
  const events = []
  const h = await sbx.files.watchDir('/tmp/watched', (e) => { events.push(`${e.type}:${e.name}`) })
  await sbx.files.write('/tmp/watched/new.txt', 'x')
  await sbx.commands.run('rm /tmp/watched/new.txt')
  for (let i = 0; i < 50 && !events.includes('remove:new.txt'); i++) await sleep(100)
  await h.stop()
  assert.ok(events.includes('create:new.txt') || events.includes('write:new.txt'), JSON.stringify(events))
  assert.ok(events.includes('remove:new.txt'), JSON.stringify(events))
})
await check('pty input resize', async () => {
  let out = ''
  const dec = new TextDecoder()
  const t = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { out += dec.decode(d) } })
  const enc = new TextEncoder()
  const waitFor = async (re) => { for (let i = 0; i < 100 && !re.test(out); i++) await sleep(100); assert.match(out, re) }
  await sbx.pty.sendInput(t.pid, enc.encode('tty; stty size\n'))
  await waitFor(/\/dev\/pts\/\d+[\s\S]*24 80/)
  await sbx.pty.resize(t.pid, { cols: 100, rows: 30 })
  await sbx.pty.sendInput(t.pid, enc.encode('stty size; exit 4\n'))
  await waitFor(/30 100/)
  const r = await t.wait().catch((e) => e)
  assert.equal(r.exitCode, 4)
})
await check('list connect setTimeout', async () => {
  const items = await Sandbox.list({ query: { metadata: { suite: 'e2b-sdk' } } }).nextItems()
  assert.ok(items.some((s) => s.sandboxId === sbx.sandboxId && s.state === 'running'), JSON.stringify(items))
  const again = await Sandbox.connect(sbx.sandboxId)
  assert.equal((await again.commands.run('echo via connect')).stdout, 'via connect\n')
  await sbx.setTimeout(300_000)
  const info = await sbx.getInfo()
  assert.ok(info.endAt.getTime() - Date.now() > 200_000 && info.endAt.getTime() - Date.now() <= 301_000, String(info.endAt))
})
await check('latency', async () => {
  // commands.run('true') through the SDK vs the same command through the
  // native API on the same VM, interleaved so load affects both alike.
  const native = async () => {
    const r = await fetch(`${process.env.E2B_API_URL}/v1/sandboxes/${sbx.sandboxId}/exec`, {
      method: 'POST', headers: { 'X-API-Key': process.env.E2B_API_KEY, 'Content-Type': 'application/json' },
      body: JSON.stringify({ argv: ['/bin/bash', '-l', '-c', 'true'], user: 'user' }),
    })
    assert.equal(r.status, 200)
    assert.equal((await r.json()).exit_code, 0)
  }
  const n = 20, sdk = [], api = []
  const time = async (fn, into) => { const t0 = process.hrtime.bigint(); await fn(); into.push(Number(process.hrtime.bigint() - t0) / 1e6) }
  for (let i = 0; i < n; i++) {
    await time(() => sbx.commands.run('true'), sdk)
    await time(native, api)
  }
  const p50 = (a) => a.sort((x, y) => x - y)[n / 2]
  return { sdk_p50_ms: +p50(sdk).toFixed(1), native_p50_ms: +p50(api).toFixed(1), sdk_min_ms: +sdk[0].toFixed(1), native_min_ms: +api[0].toFixed(1) }
})
await check('kill', async () => {
  await sbx.kill()
  assert.equal(await Sandbox.kill(sbx.sandboxId), false)
  await assert.rejects(Sandbox.getInfo(sbx.sandboxId))
})
console.log('done')
