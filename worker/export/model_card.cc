#include "worker/export/model_card.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

#ifndef FT_VERSION
#error "FT_VERSION must be defined (worker/export/CMakeLists.txt)"
#endif

namespace ft::worker {
namespace {

// Confusion matrices wider than this are left to metadata.json.
constexpr size_t kMaxConfusionClasses = 20;
constexpr int kImageChannels = 3;

// The shortest text that reads back as the same float, so that the card's
// mean and std are metadata.json's numbers and paste into Python as they are.
std::string Float(float v) {
  for (int digits = 6; digits <= 9; ++digits) {
    std::string s = absl::StrFormat("%.*g", digits, v);
    if (std::strtof(s.c_str(), nullptr) == v) return s;
  }
  return absl::StrFormat("%.9g", v);
}

std::string Fixed(float v) { return absl::StrFormat("%.4f", v); }

std::string FloatList(const std::array<float, 3>& v) {
  return absl::StrCat("[", Float(v[0]), ", ", Float(v[1]), ", ", Float(v[2]), "]");
}

// A cell of a Markdown table: pipes would end it early.
std::string Cell(const std::string& s) { return absl::StrReplaceAll(s, {{"|", "\\|"}, {"\n", " "}}); }

std::string Code(const std::string& s) { return s.empty() ? "none" : absl::StrCat("`", s, "`"); }

bool OnnxExported(const ModelMetadata& m) {
  return m.onnx.has_value() && m.onnx->error.empty() && !m.onnx->file.empty();
}

std::string OnnxAbsence(const ModelMetadata& m) {
  if (!m.onnx.has_value()) return "no model.onnx: the worker that trained this model did not export ONNX";
  if (!m.onnx->error.empty()) return absl::StrCat("no model.onnx: ", m.onnx->error);
  return "no model.onnx: the export named no file";
}

void Title(const ModelMetadata& m, std::string* out) {
  const std::string name = m.spec.name().empty() ? m.job_id : m.spec.name();
  absl::StrAppend(out, "# ", name, ": ", m.spec.backbone(), " image classifier, ", m.classes.size(), " classes\n\n");
  absl::StrAppend(out, "Fine-tuned by finetuned ", m.software.finetuned, " in job `", m.job_id,
                  "`. This card is generated from `metadata.json`, which holds the same facts for programs.\n\n");
  absl::StrAppend(out, "| file | what it is |\n| --- | --- |\n");
  absl::StrAppend(out, "| `model.pt` | TorchScript: `forward(x)` takes float32 `[N, 3, ", m.spec.image_size(), ", ",
                  m.spec.image_size(), "]` and returns logits `[N, ", m.classes.size(),
                  "]`; `features(x)` returns the pooled backbone output `[N, ", m.feature_dim, "]` |\n");
  if (OnnxExported(m)) {
    absl::StrAppend(out, "| `", m.onnx->file, "` | ONNX opset ", m.onnx->opset, ": input `input` float32 `[N, 3, ",
                    m.spec.image_size(), ", ", m.spec.image_size(), "]`, outputs `logits` `[N, ", m.classes.size(),
                    "]` and `features` `[N, ", m.feature_dim, "]` |\n");
  }
  absl::StrAppend(out, "| `metadata.json` | classes, input, metrics, history, dataset, weights and versions |\n");
  absl::StrAppend(out, "| `README.md` | this card |\n\n");
  if (!OnnxExported(m)) absl::StrAppend(out, OnnxAbsence(m), ".\n\n");
}

void Classes(const ModelMetadata& m, std::string* out) {
  absl::StrAppend(out, "## Classes\n\nIn logit order (`labels.txt` in a Triton repository has the same order):\n\n");
  absl::StrAppend(out, "| index | class |\n| ---: | --- |\n");
  for (size_t i = 0; i < m.classes.size(); ++i) absl::StrAppend(out, "| ", i, " | ", Cell(m.classes[i]), " |\n");
  absl::StrAppend(out, "\n");
}

void Metrics(const ModelMetadata& m, std::string* out) {
  const pb::JobMetrics& mt = m.metrics;
  absl::StrAppend(out, "## Metrics\n\n");
  absl::StrAppend(out, "Exported weights: epoch ", mt.best_epoch() > 0 ? mt.best_epoch() : m.best_epoch, " of ",
                  mt.epochs_completed(), " (`--export ",
                  m.spec.export_weights().empty() ? "best" : m.spec.export_weights(),
                  "`; best means the lowest validation loss).\n\n");
  absl::StrAppend(out,
                  "| split | images | top-1 accuracy | top-5 accuracy | loss |\n| --- | ---: | ---: | ---: | ---: |\n");
  absl::StrAppend(out, "| train | ", m.train_images, " | ", Fixed(mt.train_accuracy()), " | | ", Fixed(mt.train_loss()),
                  " |\n");
  absl::StrAppend(out, "| validation (", Cell(m.val_source), ") | ", m.val_images, " | ", Fixed(mt.val_accuracy()),
                  " | ", Fixed(mt.val_top5_accuracy()), " | ", Fixed(mt.val_loss()), " |\n");
  if (mt.has_test()) {
    absl::StrAppend(out, "| test (", Cell(m.test_source), ") | ", m.test_images, " | ", Fixed(mt.test_accuracy()),
                    " | ", Fixed(mt.test_top5_accuracy()), " | ", Fixed(mt.test_loss()), " |\n");
  }
  absl::StrAppend(out, "\n");
  if (!mt.has_test()) {
    absl::StrAppend(out,
                    "The dataset has no test split: the validation figures are the only held-out figures, and "
                    "validation also chose the exported epoch, so they flatter the model a little.\n\n");
    return;
  }
  if (mt.test_per_class_size() > 0) {
    absl::StrAppend(out, "### Test split, per class\n\n");
    absl::StrAppend(out, "| class | precision | recall | F1 | support |\n| --- | ---: | ---: | ---: | ---: |\n");
    for (const pb::ClassMetrics& c : mt.test_per_class()) {
      absl::StrAppend(out, "| ", Cell(c.name()), " | ", Fixed(c.precision()), " | ", Fixed(c.recall()), " | ",
                      Fixed(c.f1()), " | ", c.support(), " |\n");
    }
    absl::StrAppend(out, "\n");
  }
  const size_t n = m.classes.size();
  if (n > 0 && static_cast<size_t>(mt.test_confusion_size()) == n * n) {
    absl::StrAppend(out, "### Test confusion matrix\n\n");
    if (n > kMaxConfusionClasses) {
      absl::StrAppend(out, "With ", n, " classes it is in `metadata.json` (`metrics.test_confusion`, row-major, ",
                      "[true class][predicted class]).\n\n");
    } else {
      absl::StrAppend(out, "Rows are the true class, columns the predicted one (by index).\n\n| true \\ predicted |");
      for (size_t j = 0; j < n; ++j) absl::StrAppend(out, " ", j, " |");
      absl::StrAppend(out, "\n| --- |");
      for (size_t j = 0; j < n; ++j) absl::StrAppend(out, " ---: |");
      absl::StrAppend(out, "\n");
      for (size_t i = 0; i < n; ++i) {
        absl::StrAppend(out, "| ", i, " ", Cell(m.classes[i]), " |");
        for (size_t j = 0; j < n; ++j) absl::StrAppend(out, " ", mt.test_confusion(static_cast<int>(i * n + j)), " |");
        absl::StrAppend(out, "\n");
      }
      absl::StrAppend(out, "\n");
    }
  }
}

void History(const ModelMetadata& m, std::string* out) {
  if (m.history.empty()) return;
  absl::StrAppend(out, "### Per epoch\n\n");
  absl::StrAppend(out,
                  "| epoch | train loss | train accuracy | val loss | val accuracy | learning rate | frozen stages |\n"
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const pb::EpochSummary& s : m.history) {
    absl::StrAppend(out, "| ", s.epoch(), s.best() ? " (best)" : "", " | ", Fixed(s.train_loss()), " | ",
                    Fixed(s.train_accuracy()), " | ", Fixed(s.val_loss()), " | ", Fixed(s.val_accuracy()), " | ",
                    absl::StrFormat("%.6g", s.learning_rate()), " | ", s.freeze_depth(), " |\n");
  }
  absl::StrAppend(out, "\n");
}

void Provenance(const ModelMetadata& m, std::string* out) {
  absl::StrAppend(out, "## Dataset\n\n");
  absl::StrAppend(out, "- URI: `", m.spec.dataset_uri(), "` (layout ",
                  m.dataset_format.empty() ? "unknown" : m.dataset_format, ")\n");
  absl::StrAppend(out, "- Images: ", m.train_images, " train, ", m.val_images, " validation (", m.val_source, ")");
  if (m.test_images > 0) absl::StrAppend(out, ", ", m.test_images, " test (", m.test_source, ")");
  absl::StrAppend(out, "; ", m.metrics.skipped_images(), " undecodable images skipped\n");
  if (!m.dataset_sha256.empty()) {
    absl::StrAppend(out, "- Archive sha256: `", m.dataset_sha256,
                    "` (the bytes of the uploaded or archived dataset)\n");
  } else {
    absl::StrAppend(out, "- Archive sha256: none (a folder, read in place)\n");
  }
  absl::StrAppend(out, "- Listing sha256: `", m.dataset_listing_sha256,
                  "` (every image of every split, in order, by split, class and path relative to the dataset; it "
                  "names the images, not their bytes)\n\n");

  absl::StrAppend(out, "## Backbone and weights\n\n");
  absl::StrAppend(out, "- Backbone: `", m.spec.backbone(), "` (", m.feature_dim, "-d features), stages ",
                  absl::StrJoin(m.stages, ", "), "\n");
  absl::StrAppend(out, "- Starting weights: `", m.spec.weights_uri().empty() ? "none" : m.spec.weights_uri(), "`");
  if (!m.weights_file.empty()) absl::StrAppend(out, ", file `", m.weights_file, "`");
  absl::StrAppend(out, "\n- Weights sha256: ", Code(m.weights_sha256), "\n");
  absl::StrAppend(out, "- Freeze depth: ", m.spec.freeze_depth() < 0 ? "all" : absl::StrCat(m.spec.freeze_depth()),
                  " (stages frozen from the input)");
  if (m.spec.unfreeze_at() > 0) {
    absl::StrAppend(out, "; from epoch ", m.spec.unfreeze_at(), " freeze depth ",
                    m.spec.finetune_freeze_depth() < 0 ? "all" : absl::StrCat(m.spec.finetune_freeze_depth()),
                    " at lr x ", Float(m.spec.finetune_lr_mult()));
  }
  absl::StrAppend(out, "\n- Recipe: epochs ", m.spec.epochs(), ", batch ", m.spec.batch_size(), ", optimizer ",
                  m.spec.optimizer(), ", lr ", Float(m.spec.learning_rate()), ", augment ", m.spec.augment(), "\n\n");

  absl::StrAppend(out, "## Reproducibility\n\n");
  absl::StrAppend(out, "- Seed: ", m.spec.seed(), "\n");
  absl::StrAppend(out, "- Software: finetuned ", m.software.finetuned, ", LibTorch ", m.software.libtorch, ", OpenCV ",
                  m.software.opencv, ", BLAS ", m.software.blas, "\n\n");
}

void Preprocessing(const ModelMetadata& m, std::string* out) {
  const int s = m.spec.image_size();
  absl::StrAppend(out, "## Preprocessing\n\nExactly what evaluation did, and what the model expects:\n\n");
  absl::StrAppend(out,
                  "1. Decode the image as RGB (grayscale replicated to 3 channels, alpha dropped, 16-bit scaled "
                  "to 8 bits).\n");
  absl::StrAppend(out, "2. Resize the shorter side to ", m.resize_size,
                  " pixels, keeping the aspect ratio (OpenCV INTER_AREA when shrinking, bilinear when enlarging).\n");
  absl::StrAppend(out, "3. Centre-crop ", s, " x ", s, ".\n");
  absl::StrAppend(out, "4. Convert to float32 in [0, 1] (divide by 255).\n");
  absl::StrAppend(out, "5. Normalise each channel: (x - mean) / std with mean = ", FloatList(m.mean),
                  " and std = ", FloatList(m.std), " (R, G, B).\n");
  absl::StrAppend(out, "6. Lay out as NCHW: float32 `[N, ", kImageChannels, ", ", s, ", ", s, "]`.\n\n");
  absl::StrAppend(out,
                  "In torchvision (whose `Resize` is PIL's antialiased bilinear, within rounding of the above):\n\n");
  absl::StrAppend(out, "```python\nfrom torchvision import transforms\ntransform = transforms.Compose([\n",
                  "    transforms.Resize(", m.resize_size, "), transforms.CenterCrop(", s,
                  "), transforms.ToTensor(),\n", "    transforms.Normalize(", FloatList(m.mean), ", ", FloatList(m.std),
                  ")])\n```\n\n");
}

void Loading(const ModelMetadata& m, std::string* out) {
  const int s = m.spec.image_size();
  absl::StrAppend(out, "## Load it\n\n### PyTorch\n\n");
  absl::StrAppend(out, "```python\nimport json, torch\nfrom PIL import Image\n",
                  "model = torch.jit.load(\"model.pt\").eval()\n",
                  "classes = json.load(open(\"metadata.json\"))[\"classes\"]\n",
                  "x = transform(Image.open(\"image.jpg\").convert(\"RGB\")).unsqueeze(0)  # transform: above\n",
                  "print(classes[model(x).argmax(1).item()])\n```\n\n");
  absl::StrAppend(out, "### onnxruntime\n\n");
  if (OnnxExported(m)) {
    absl::StrAppend(out, "When this download has `", m.onnx->file, "` (opset ", m.onnx->opset, ", written by ",
                    m.onnx->converter, "; finetuned's test suite checks its exports against ", m.onnx->verified_with,
                    "):\n\n");
    absl::StrAppend(out, "```python\nimport onnxruntime as ort\n", "session = ort.InferenceSession(\"", m.onnx->file,
                    "\")\n", "x = transform(Image.open(\"image.jpg\").convert(\"RGB\")).unsqueeze(0).numpy()\n",
                    "logits, features = session.run([\"logits\", \"features\"], {\"input\": x})\n",
                    "print(classes[logits.argmax(1)[0]])\n```\n\n");
  } else {
    absl::StrAppend(out, OnnxAbsence(m),
                    ". `model.pt` serves through PyTorch and Triton's pytorch_libtorch "
                    "backend.\n\n");
  }
  absl::StrAppend(out, "### Triton\n\n");
  absl::StrAppend(out,
                  "```sh\nftctl models download MODEL --triton-repo models/   # MODEL: this model's id "
                  "(metadata.json's model_id)\ntritonserver --model-repository=models/\n```\n\n");
  absl::StrAppend(out,
                  "That writes `models/<name>/1/model.pt` with a `config.pbtxt` for `pytorch_libtorch` (input "
                  "`INPUT__0` TYPE_FP32 dims [3, ",
                  s, ", ", s, "], output `OUTPUT__0` TYPE_FP32 dims [", m.classes.size(),
                  "] with `labels.txt`; dynamic batch)");
  if (OnnxExported(m)) {
    absl::StrAppend(out, ", and `models/<name>-onnx/1/model.onnx` with one for `onnxruntime_onnx` (input `input` [3, ",
                    s, ", ", s, "], outputs `logits` [", m.classes.size(), "] and `features` [", m.feature_dim, "])");
  }
  absl::StrAppend(out, ". Clients send preprocessed float32 tensors, as above.\n");
}

}  // namespace

const char* FinetunedVersion() { return FT_VERSION; }

std::string ModelCard(const ModelMetadata& m) {
  std::string out;
  Title(m, &out);
  Classes(m, &out);
  Metrics(m, &out);
  History(m, &out);
  Provenance(m, &out);
  Preprocessing(m, &out);
  Loading(m, &out);
  return out;
}

}  // namespace ft::worker
