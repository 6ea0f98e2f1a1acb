// Runs model.onnx in onnxruntime (onnxruntime-node, CPU) on the images of
// input.bin ([B,3,S,S] float32, as ft_onnx_check writes it), once with the
// first image alone and once with all B, and writes each output as
// <output>_b<batch>.bin (float32) in OUTDIR, with what the session says
// about itself in session.json.
//
// usage: node run_onnx.mjs MODEL_ONNX INPUT_BIN IMAGE_SIZE OUTDIR
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const ort = require("onnxruntime-node");

const [modelPath, inputPath, sizeArg, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: node run_onnx.mjs MODEL_ONNX INPUT_BIN IMAGE_SIZE OUTDIR");
  process.exit(2);
}
const size = Number(sizeArg);
const bytes = fs.readFileSync(inputPath);
const all = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
const perImage = 3 * size * size;
const images = all.length / perImage;

// One thread, as ft_onnx_check: ctest runs two checks side by side.
const session = await ort.InferenceSession.create(modelPath, {
  executionProviders: ["cpu"],
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
});
const info = {
  onnxruntime: require("onnxruntime-node/package.json").version,
  inputNames: session.inputNames,
  outputNames: session.outputNames,
  runs: [],
};
for (const batch of [1, images]) {
  const data = all.slice(0, batch * perImage);
  const feeds = { input: new ort.Tensor("float32", data, [batch, 3, size, size]) };
  const start = process.hrtime.bigint();
  const results = await session.run(feeds);
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  const run = { batch, ms, outputs: {} };
  for (const name of session.outputNames) {
    const t = results[name];
    if (t.type !== "float32") throw new Error(`output ${name} is ${t.type}, not float32`);
    run.outputs[name] = t.dims;
    const out = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    fs.writeFileSync(path.join(outDir, `${name}_b${batch}.bin`), out);
  }
  info.runs.push(run);
}
fs.writeFileSync(path.join(outDir, "session.json"), JSON.stringify(info, null, 2));
console.log(`onnxruntime ${info.onnxruntime}: ${info.runs.map((r) => `batch ${r.batch} in ${r.ms.toFixed(1)} ms`).join(", ")}`);
