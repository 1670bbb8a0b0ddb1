// Copies the browser libraries installed by `npm ci` (exact versions, package-lock.json) into the Python packages,
// where they are committed and served by the services themselves: nothing is fetched from a CDN at run time.
//   cd web && npm ci --ignore-scripts && node vendor.mjs
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const modules = join(here, "node_modules");
const version = (name) => JSON.parse(readFileSync(join(modules, name, "package.json"), "utf8")).version;

const copies = [
  // the web console's Socket.IO client (ES module build, no bundler needed)
  ["socket.io-client/dist/socket.io.esm.min.js", "gary/console/static/vendor/socket.io.esm.min.js"],
  ["socket.io-client/LICENSE", "gary/console/static/vendor/socket.io-client.LICENSE.txt"],
  // Swagger UI for jerry's and terry's /docs (garycommon.docs_assets)
  ["swagger-ui-dist/swagger-ui-bundle.js", "common/docs_static/swagger-ui-bundle.js"],
  ["swagger-ui-dist/swagger-ui.css", "common/docs_static/swagger-ui.css"],
  ["swagger-ui-dist/favicon-32x32.png", "common/docs_static/favicon-32x32.png"],
  ["swagger-ui-dist/LICENSE", "common/docs_static/swagger-ui.LICENSE.txt"],
  ["swagger-ui-dist/NOTICE", "common/docs_static/swagger-ui.NOTICE.txt"],
];
for (const [from, to] of copies) {
  mkdirSync(dirname(join(root, to)), { recursive: true });
  let data = readFileSync(join(modules, from));
  if (to.endsWith(".js")) {
    // the source maps are not shipped: drop the pointer so no browser asks for a missing file
    data = Buffer.from(data.toString("utf8").replace(/\n\/\/# sourceMappingURL=\S+\s*$/, "\n"));
  }
  writeFileSync(join(root, to), data);
  console.log(`${to}  <-  ${from}`);
}
const versions = { "socket.io-client": version("socket.io-client"), "swagger-ui-dist": version("swagger-ui-dist") };
console.log(JSON.stringify(versions));
