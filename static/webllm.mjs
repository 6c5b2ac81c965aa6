// ES-module entry: `import webllm from "/webllm.mjs"`. webllm.js is a classic script that sets
// globalThis.webllm; imported as a module it has no currentScript, so the base URL is set here.
import "./webllm.js";

const webllm = globalThis.webllm;
if (!webllm.baseURL) webllm.baseURL = new URL("./", import.meta.url).href;
webllm.ready(); // start the worker now, as the script tag does

export default webllm;
export const { create, runPython, ready, WebLLMError, hasModelInCache, deleteModel, errorHint } = webllm;
