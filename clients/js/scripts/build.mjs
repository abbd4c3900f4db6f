// Builds the client: dist/index.js (the npm package's ES module, dependencies left as imports) and
// ../../static/opsync.js (one self-contained ES module the opsync server serves at /opsync.js; it is
// committed, so running the server needs no Node). `--bundle-only` builds just the latter.
import { build } from "esbuild";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const pkg = JSON.parse(await readFile(join(root, "package.json"), "utf8"));
const bundleOnly = process.argv.includes("--bundle-only");

const common = {
  entryPoints: [join(root, "src/index.ts")],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022", "chrome100", "firefox100", "safari16"],
  legalComments: "inline",
  logLevel: "warning",
};

await build({
  ...common,
  outfile: join(root, "../../static/opsync.js"),
  banner: {
    js: `// opsync browser client ${pkg.version}: generated from clients/js by \`npm run bundle\`; do not edit.\n// Bundles @msgpack/msgpack, idb and uuid (see their licenses in node_modules).`,
  },
});

if (!bundleOnly) {
  await build({
    ...common,
    outfile: join(root, "dist/index.js"),
    external: Object.keys(pkg.dependencies ?? {}),
    sourcemap: true,
  });
}
