// Drives the official E2B JS SDKs against a running `agentbox serve`. Run from a package directory
// (oldest/ or newest/, after npm ci) with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set:
//
//   node ../conformance.mjs            the conformance checks; exits non-zero on the first failure
//   node ../conformance.mjs bench 50   Sandbox.create() + runCode('1+1') + kill, N times; prints the median
//
// E2B_HEAVY=1 adds the checks that need the heavy tier (a matplotlib chart, commands).
import { createRequire } from 'node:module'
import assert from 'node:assert/strict'

const require = createRequire(process.cwd() + '/')
const { Sandbox } = await import(require.resolve('@e2b/code-interpreter'))
const { version } = require('e2b/package.json')
const ciVersion = require('@e2b/code-interpreter/package.json').version

const heavy = process.env.E2B_HEAVY === '1'
let passed = 0, failed = 0

async function check(name, fn) {
  try {
    await fn()
    passed++
    console.log(`ok   ${name}`)
  } catch (err) {
    failed++
    console.log(`FAIL ${name}: ${err && err.stack || err}`)
  }
}

async function conformance() {
  console.log(`e2b ${version}, @e2b/code-interpreter ${ciVersion}`)
  const sbx = await Sandbox.create({ metadata: { suite: 'conformance' }, envs: { GREETING: 'hello' } })
  await check('create returns a sandbox id', () => assert.ok(sbx.sandboxId))
  await check('runCode returns the last expression', async () => {
    const ex = await sbx.runCode('x = 1 + 1\nx')
    assert.equal(ex.text, '2')
    assert.equal(ex.results.length, 1)
    assert.equal(ex.results[0].isMainResult, true)
  })
  await check('runCode keeps state and streams stdout', async () => {
    const seen = []
    const ex = await sbx.runCode('print(x * 21)', { onStdout: (m) => seen.push(m.line) })
    assert.deepEqual(ex.logs.stdout, ['42\n'])
    assert.deepEqual(seen, ['42\n'])
  })
  await check('runCode strips the quotes of a string result', async () => {
    const ex = await sbx.runCode("'abc'")
    assert.equal(ex.text, 'abc')
  })
  await check('create envs reach the code', async () => {
    const ex = await sbx.runCode("import os\nos.environ['GREETING']")
    assert.equal(ex.text, 'hello')
  })
  await check('runCode envs apply to one execution', async () => {
    const ex = await sbx.runCode("os.environ.get('ONCE')", { envs: { ONCE: 'yes' } })
    assert.equal(ex.text, 'yes')
    const after = await sbx.runCode("os.environ.get('ONCE', 'gone')")
    assert.equal(after.text, 'gone')
  })
  await check('runCode reports an error with name, value and traceback', async () => {
    const ex = await sbx.runCode('1/0')
    assert.equal(ex.error.name, 'ZeroDivisionError')
    assert.match(ex.error.value, /division by zero/)
    assert.match(ex.error.traceback, /ZeroDivisionError/)
  })
  await check('display output is a result with its MIME keys', async () => {
    const ex = await sbx.runCode("from IPython.display import display, HTML\ndisplay(HTML('<b>hi</b>'))")
      .catch(() => null)
    const ex2 = ex && !ex.error ? ex : await sbx.runCode("class H:\n    def _repr_html_(self): return '<b>hi</b>'\nH()")
    const r = ex2.results.find((r) => r.html)
    assert.ok(r, 'a result with html: ' + JSON.stringify(ex2.results))
    assert.equal(r.html, '<b>hi</b>')
  })
  if (heavy) {
    await check('a matplotlib chart is a png result with chart data', async () => {
      const ex = await sbx.runCode("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [4, 5, 6])\nplt.title('t')\nplt.show()")
      assert.equal(ex.error, undefined, JSON.stringify(ex.error))
      const r = ex.results.find((r) => r.png)
      assert.ok(r, 'a png result')
      assert.ok(Buffer.from(r.png, 'base64').subarray(1, 4).toString() === 'PNG')
      assert.equal(r.chart && r.chart.type, 'line')
      assert.equal(r.chart.title, 't')
    })
  }
  await check('files write, read and list', async () => {
    await sbx.files.write('/home/user/a.txt', 'hi')
    assert.equal(await sbx.files.read('/home/user/a.txt'), 'hi')
    await sbx.files.write([{ path: '/home/user/d/b.txt', data: 'b' }, { path: '/home/user/d/c.txt', data: 'c' }])
    const names = (await sbx.files.list('/home/user/d')).map((e) => e.name).sort()
    assert.deepEqual(names, ['b.txt', 'c.txt'])
    const info = await sbx.files.getInfo('/home/user/a.txt')
    assert.equal(info.type, 'file')
    assert.equal(info.size, 2)
  })
  await check('files makeDir, rename, remove, exists', async () => {
    assert.equal(await sbx.files.makeDir('/home/user/m'), true)
    assert.equal(await sbx.files.makeDir('/home/user/m'), false)
    await sbx.files.rename('/home/user/a.txt', '/home/user/m/a2.txt')
    assert.equal(await sbx.files.exists('/home/user/m/a2.txt'), true)
    assert.equal(await sbx.files.exists('/home/user/a.txt'), false)
    await sbx.files.remove('/home/user/m')
    assert.equal(await sbx.files.exists('/home/user/m'), false)
  })
  await check('a missing file is NotFound', async () => {
    await assert.rejects(sbx.files.read('/home/user/nope.txt'), (e) => e.name === 'NotFoundError' || e.name === 'FileNotFoundError')
  })
  await check('getInfo and list show the sandbox with its metadata', async () => {
    const info = await sbx.getInfo()
    assert.equal(info.sandboxId, sbx.sandboxId)
    assert.equal(info.metadata.suite, 'conformance')
    const page = await Sandbox.list({ query: { metadata: { suite: 'conformance' } } }).nextItems()
    assert.ok(page.some((s) => s.sandboxId === sbx.sandboxId))
  })
  await check('isRunning', async () => assert.equal(await sbx.isRunning(), true))
  if (heavy) {
    await check('commands.run echo', async () => {
      const r = await sbx.commands.run('echo hi')
      assert.equal(r.exitCode, 0)
      assert.equal(r.stdout, 'hi\n')
    })
    await check('commands.run failing command throws CommandExitError', async () => {
      await assert.rejects(sbx.commands.run('echo oops >&2; exit 3'), (e) => e.exitCode === 3 && /oops/.test(e.stderr))
    })
    await check('commands.run sees the create envs and its own, streams stdout', async () => {
      const seen = []
      const r = await sbx.commands.run('echo $GREETING $OWN', { envs: { OWN: 'own' }, onStdout: (d) => seen.push(d) })
      assert.equal(r.stdout, 'hello own\n')
      assert.equal(seen.join(''), 'hello own\n')
    })
    await check('the base template is a heavy sandbox with a shell', async () => {
      const { Sandbox: Base } = await import(require.resolve('e2b'))
      const b = await Base.create()
      try {
        const r = await b.commands.run('python3 -c "import numpy; print(numpy.__name__)"')
        assert.equal(r.stdout, 'numpy\n')
      } finally {
        await b.kill()
      }
    })
    await check('commands.run background command', async () => {
      const h = await sbx.commands.run('sleep 30', { background: true })
      assert.ok(h.pid > 0)
      const list = await sbx.commands.list()
      assert.ok(list.some((p) => p.pid === h.pid))
      assert.equal(await h.kill(), true)
    })
  }
  if (typeof sbx.fork === 'function') {
    await check('fork copies the state', async () => {
      await sbx.runCode('forked = 7')
      const [child] = await sbx.fork()
      assert.ok(!(child instanceof Error), String(child))
      assert.equal((await child.runCode('forked * 6')).text, '42')
      await child.kill()
    })
  }
  if (typeof sbx.createSnapshot === 'function') {
    await check('a snapshot starts new sandboxes, also after its sandbox was killed', async () => {
      const src = await Sandbox.create()
      await src.runCode("snap = 'kept'")
      const { snapshotId } = await src.createSnapshot()
      await src.kill()
      const again = await Sandbox.create(snapshotId)
      assert.equal((await again.runCode('snap')).text, 'kept')
      await again.kill()
      assert.equal(await Sandbox.deleteSnapshot(snapshotId), true)
    })
  }
  await check('setTimeout kills the sandbox at its deadline', async () => {
    const short = await Sandbox.create({ timeoutMs: 60_000 })
    const set = Date.now()
    await short.setTimeout(2_000)
    const running = await short.isRunning()
    if (Date.now() - set < 1_500) assert.equal(running, true, 'killed before its deadline')
    // Then gone once the deadline passed: polled (a loaded machine may take longer than the deadline to
    // answer).
    const until = Date.now() + 60_000
    while (await short.isRunning()) {
      assert.ok(Date.now() < until, 'still running 60 s after a 2 s deadline')
      await new Promise((r) => setTimeout(r, 250))
    }
    assert.equal(await Sandbox.kill(short.sandboxId), false)
  })
  await check('kill', async () => {
    assert.notEqual(await sbx.kill(), false) // e2b < 2.3x answers undefined
    assert.equal(await sbx.isRunning(), false)
    assert.equal(await Sandbox.kill(sbx.sandboxId), false)
  })
  console.log(`${passed} passed, ${failed} failed`)
  process.exit(failed ? 1 : 0)
}

async function bench(n) {
  const times = []
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    const sbx = await Sandbox.create()
    const ex = await sbx.runCode('1+1')
    await sbx.kill()
    times.push(performance.now() - t0)
    assert.equal(ex.text, '2')
  }
  times.sort((a, b) => a - b)
  console.log(JSON.stringify({ sdk: `e2b ${version} @e2b/code-interpreter ${ciVersion}`, n, median_ms: times[n >> 1], min_ms: times[0], max_ms: times[n - 1] }))
}

if (process.argv[2] === 'bench') await bench(Number(process.argv[3] || 50))
else await conformance()
