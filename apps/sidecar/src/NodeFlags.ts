/**
 * The V8 flags the production launcher starts `sleeve` with, in one place: the artefact's first
 * line (rolldown.config.ts writes {@link shebang} above `dist/main.js`), which is what runs under
 * every way Sleeve is shipped — `npm install -g` links `sleeve` to that file, the container
 * image's `ENTRYPOINT ["sleeve"]` and the systemd unit's `ExecStart=/usr/local/bin/sleeve` exec
 * it — and the e2e tests that check each of them.
 *
 * Why these flags (measured: bench/figures/hotpath-session3.md, docs/performance.md "What each change
 * bought"): with V8's defaults, a process that has loaded Sleeve's ~25 MB of code and objects
 * grows its young generation to 16 MiB semi-spaces during start-up and keeps too little old-space
 * headroom, so moving bulk data (every TLS read allocates an ArrayBuffer outside the heap) makes
 * V8 run 15–30 full mark-compacts per 256 MiB on its GC threads: ~40 % more CPU per GiB than a
 * bare `node:tls` proxy. Small semi-spaces and an old space sized above the idle heap remove
 * them, at no idle-RSS cost (V8 reserves the old space, it does not touch it).
 *
 * They are V8 options, not Node options: `--initial-old-space-size` is refused in
 * `NODE_OPTIONS`, so they go on the command line (`env -S` splits the shebang's arguments:
 * GNU coreutils ≥ 8.30, as in Debian and the node:slim image; BusyBox's env lacks it). Running
 * `node dist/main.js` by hand skips them: pass them yourself (`node $(flags) dist/main.js`).
 */

/** V8 heap flags of `sleeve` (every command; only `run` lives long enough for them to matter). */
export const v8Flags: ReadonlyArray<string> = ["--max-semi-space-size=2", "--initial-old-space-size=128"]

/** The first line of the artefact's entry point. */
export const shebang = `#!/usr/bin/env -S node ${v8Flags.join(" ")}`
