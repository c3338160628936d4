// Bundles src/terminal.js (xterm.js and its CSS included) into the Python package's static/ directory:
// terminal.js (an ES module for anywidget) and terminal.css.  `npm run build`; `make js` runs it.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));

await build({
  entryPoints: { terminal: here("src/terminal.js") },
  outdir: here("../tunnelnb/notebook/widgets/static"),
  bundle: true,
  format: "esm",
  target: "es2020",
  minify: true,
  legalComments: "eof",
  logLevel: "warning",
});
