// ftctl's model commands: models list, get, download (into a folder, or as
// a Triton model repository) and delete, and predict.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/ftctl_handlers.h"
#include "common/util/files.h"
#include "common/util/proto_json.h"
#include "common/util/status.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace ft::client::ftctl {
namespace {

namespace fs = std::filesystem;

// Triton batches requests up to this many images (max_batch_size); the
// exported models take any N. Edit config.pbtxt to change it.
constexpr int kTritonMaxBatchSize = 64;

// What a Triton configuration needs from a model's metadata.json.
struct ServedShape {
  std::vector<std::string> classes;  // in logit order
  int64_t image_size = 0;
  int64_t feature_dim = 0;
};

absl::StatusOr<ServedShape> ReadServedShape(const fs::path& metadata_path) {
  FT_ASSIGN_OR_RETURN(std::string text, util::ReadFile(metadata_path.string(), int64_t{64} << 20));
  google::protobuf::Struct meta;
  if (!google::protobuf::util::JsonStringToMessage(text, &meta).ok()) {
    return absl::DataLossError(absl::StrCat(metadata_path.string(), " is not JSON"));
  }
  const auto& fields = meta.fields();
  ServedShape shape;
  auto number = [&](const char* key, int64_t* out) -> absl::Status {
    auto it = fields.find(key);
    if (it == fields.end() || !it->second.has_number_value() || it->second.number_value() <= 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(metadata_path.string(), " has no positive \"", key, "\": cannot describe the model to Triton"));
    }
    *out = static_cast<int64_t>(it->second.number_value());
    return absl::OkStatus();
  };
  FT_RETURN_IF_ERROR(number("image_size", &shape.image_size));
  FT_RETURN_IF_ERROR(number("feature_dim", &shape.feature_dim));
  auto classes = fields.find("classes");
  if (classes != fields.end() && classes->second.has_list_value()) {
    for (const auto& c : classes->second.list_value().values()) shape.classes.push_back(c.string_value());
  }
  if (shape.classes.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(metadata_path.string(), " lists no classes"));
  }
  return shape;
}

// One tensor of a config.pbtxt.
std::string TensorConfig(const std::string& name, const std::vector<int64_t>& dims, bool labels) {
  return absl::StrCat("  {\n    name: \"", name, "\"\n    data_type: TYPE_FP32\n    dims: [ ",
                      absl::StrJoin(dims, ", "), " ]\n", labels ? "    label_filename: \"labels.txt\"\n" : "", "  }");
}

// config.pbtxt of one model: inputs and outputs without the batch
// dimension, which max_batch_size > 0 makes Triton's own.
std::string TritonConfig(const std::string& name, const std::string& platform, const std::string& model_file,
                         const std::vector<std::string>& inputs, const std::vector<std::string>& outputs,
                         const ServedShape& shape) {
  const std::vector<int64_t> image = {3, shape.image_size, shape.image_size};
  std::vector<std::string> in, out;
  for (const auto& i : inputs) in.push_back(TensorConfig(i, image, false));
  for (size_t o = 0; o < outputs.size(); ++o) {
    // The first output is the logits; an ONNX model's second is the features.
    out.push_back(o == 0 ? TensorConfig(outputs[o], {static_cast<int64_t>(shape.classes.size())}, true)
                         : TensorConfig(outputs[o], {shape.feature_dim}, false));
  }
  return absl::StrCat("name: \"", name, "\"\nplatform: \"", platform, "\"\ndefault_model_filename: \"",
                      model_file, "\"\nmax_batch_size: ", kTritonMaxBatchSize, "\ninput [\n", absl::StrJoin(in, ",\n"),
                      "\n]\noutput [\n", absl::StrJoin(out, ",\n"), "\n]\ndynamic_batching { }\n");
}

// What Triton accepts as a model (and folder) name.
bool IsTritonName(const std::string& name) {
  return !name.empty() && name[0] != '.' && name.size() <= 200 &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
         });
}

std::string SanitizedName(const std::string& model_id) {
  std::string out;
  for (char c : model_id) {
    out += absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ? c : '_';
  }
  return out.empty() || out[0] == '.' ? absl::StrCat("model", out) : out;
}

absl::Status Fail(const std::string& what, const std::error_code& ec) {
  return absl::PermissionDeniedError(absl::StrCat(what, ": ", ec.message()));
}

// Moves (or, from a --dir the user keeps, copies) `from` to `to`.
absl::Status Place(const fs::path& from, const fs::path& to, bool keep_source) {
  std::error_code ec;
  fs::create_directories(to.parent_path(), ec);
  if (ec) return Fail(absl::StrCat("cannot create ", to.parent_path().string()), ec);
  if (keep_source) {
    fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
  } else {
    fs::rename(from, to, ec);
  }
  if (ec) return Fail(absl::StrCat("cannot write ", to.string()), ec);
  return absl::OkStatus();
}

absl::Status WriteText(const fs::path& path, const std::string& text) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  if (ec) return Fail(absl::StrCat("cannot create ", path.parent_path().string()), ec);
  return util::WriteFileAtomic(path.string(), text);
}

// Lays out the downloaded files in `files_dir` as Triton models `name` and
// `name`-onnx (when there is a model.onnx) under `staging`, and returns the
// model folders made there.
absl::StatusOr<std::vector<std::string>> StageTritonModels(const fs::path& files_dir, bool keep_source,
                                                           const fs::path& staging, const std::string& name) {
  FT_ASSIGN_OR_RETURN(const ServedShape shape, ReadServedShape(files_dir / "metadata.json"));
  const std::string labels = absl::StrCat(absl::StrJoin(shape.classes, "\n"), "\n");
  std::vector<std::string> models = {name};
  const fs::path pt = staging / name;
  FT_RETURN_IF_ERROR(Place(files_dir / "model.pt", pt / "1" / "model.pt", keep_source));
  FT_RETURN_IF_ERROR(WriteText(pt / "config.pbtxt", TritonConfig(name, "pytorch_libtorch", "model.pt", {"INPUT__0"},
                                                                 {"OUTPUT__0"}, shape)));
  FT_RETURN_IF_ERROR(WriteText(pt / "labels.txt", labels));
  // The card and metadata beside the configuration: Triton reads only the
  // configuration, the labels and the numbered version folders.
  for (const char* doc : {"README.md", "metadata.json"}) {
    std::error_code ec;
    if (fs::exists(files_dir / doc, ec)) FT_RETURN_IF_ERROR(Place(files_dir / doc, pt / doc, true));
  }
  std::error_code ec;
  if (fs::exists(files_dir / "model.onnx", ec)) {
    const std::string onnx_name = absl::StrCat(name, "-onnx");
    const fs::path onnx = staging / onnx_name;
    FT_RETURN_IF_ERROR(Place(files_dir / "model.onnx", onnx / "1" / "model.onnx", keep_source));
    FT_RETURN_IF_ERROR(WriteText(onnx / "config.pbtxt", TritonConfig(onnx_name, "onnxruntime_onnx", "model.onnx",
                                                                     {"input"}, {"logits", "features"}, shape)));
    FT_RETURN_IF_ERROR(WriteText(onnx / "labels.txt", labels));
    models.push_back(onnx_name);
  }
  return models;
}

// The files under `dir`, sorted.
std::vector<std::string> FilesUnder(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec)) out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// `models download MODEL --triton-repo REPO [--name N] [--force] [--dir DIR]`.
// Nothing in REPO changes until every file has arrived and checked out: the
// models are staged in a hidden folder inside REPO and renamed into place.
absl::StatusOr<std::vector<std::string>> DownloadTritonRepo(Invocation& inv) {
  const std::string model_id = inv.args()[0];
  const fs::path repo = inv.Flag("triton-repo");
  const std::string name = inv.Has("name") ? inv.Flag("name") : SanitizedName(model_id);
  if (!IsTritonName(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--name '", name, "' is not a Triton model name: letters, digits, '-', '_' and '.', not starting with '.'"));
  }
  const bool force = inv.Has("force");
  const std::vector<fs::path> targets = {repo / name, repo / absl::StrCat(name, "-onnx")};
  for (const auto& t : targets) {
    std::error_code ec;
    if (!force && fs::exists(t, ec)) {
      return absl::AlreadyExistsError(absl::StrCat(t.string(), " already exists: pass --force to replace it"));
    }
  }
  std::error_code ec;
  fs::create_directories(repo, ec);
  if (ec) return Fail(absl::StrCat("cannot create ", repo.string()), ec);
  const fs::path staging = repo / absl::StrCat(".ftctl-", name, "-", ::getpid());
  fs::remove_all(staging, ec);
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ignored;
      fs::remove_all(dir, ignored);
    }
  } cleanup{staging};
  const bool keep_source = inv.Has("dir");
  const fs::path files_dir = keep_source ? fs::path(inv.Flag("dir")) : staging / "download";
  FT_RETURN_IF_ERROR(inv.client().DownloadModel(model_id, files_dir.string()).status());
  FT_ASSIGN_OR_RETURN(std::vector<std::string> models,
                      StageTritonModels(files_dir, keep_source, staging / "models", name));
  // Replace what --force replaces, also a <name>-onnx this model no longer has.
  for (const auto& t : targets) {
    if (fs::exists(t, ec)) {
      fs::rename(t, staging / absl::StrCat("old-", t.filename().string()), ec);
      if (ec) return Fail(absl::StrCat("cannot replace ", t.string()), ec);
    }
  }
  std::vector<std::string> written;
  for (const auto& m : models) {
    fs::rename(staging / "models" / m, repo / m, ec);
    if (ec) return Fail(absl::StrCat("cannot write ", (repo / m).string()), ec);
    for (auto& f : FilesUnder(repo / m)) written.push_back(std::move(f));
  }
  if (keep_source) {
    for (auto& f : FilesUnder(files_dir)) written.push_back(std::move(f));
  }
  return written;
}

}  // namespace

int ListModels(Invocation& inv) {
  auto models = inv.client().ListModels(inv.Flag("tenant"));
  if (!models.ok()) return inv.Fail(models.status());
  if (inv.PrintedAsJson(*models, &pb::ListModelsResponse::add_models)) return kExitOk;
  const bool tenants = inv.Has("tenant") || SpansTenants(*models);
  std::cout << TenantCell(tenants, "TENANT") << absl::StrFormat("%-18s %-20s %-10s %-8s %-9s %s\n", "MODEL", "JOB", "BACKBONE", "CLASSES",
                               "VAL_ACC", "SIZE");
  for (const auto& m : *models) {
    std::cout << TenantCell(tenants, m.tenant()) << absl::StrFormat("%-18s %-20s %-10s %-8d %-9.4f %.1f MB\n", m.id(), m.job_id(), m.backbone(),
                                 m.classes_size(), m.metrics().val_accuracy(), m.size_bytes() / 1e6);
  }
  return kExitOk;
}

// JSON in both output modes: a model's record has no text form.
int GetModel(Invocation& inv) {
  auto model = inv.client().GetModel(inv.args()[0]);
  if (!model.ok()) return inv.Fail(model.status());
  std::cout << util::ToJson(*model) << std::endl;
  return kExitOk;
}

int DownloadModel(Invocation& inv) {
  if (!inv.Has("dir") && !inv.Has("triton-repo")) return inv.Refuse("models download needs --dir or --triton-repo");
  if (inv.Has("dir") && inv.Flag("dir").empty()) return inv.Refuse("--dir needs a folder");
  if (inv.Has("triton-repo") && inv.Flag("triton-repo").empty()) return inv.Refuse("--triton-repo needs a folder");
  if (!inv.Has("triton-repo") && (inv.Has("name") || inv.Has("force"))) {
    return inv.Refuse("--name and --force go with --triton-repo");
  }
  auto files = inv.Has("triton-repo") ? DownloadTritonRepo(inv)
                                      : inv.client().DownloadModel(inv.args()[0], inv.Flag("dir"));
  if (!files.ok()) return inv.Fail(files.status());
  if (inv.json()) {
    std::cout << "{\"files\":[\"" << absl::StrJoin(*files, "\",\"") << "\"]}" << std::endl;
  } else {
    for (const auto& f : *files) std::cout << f << std::endl;
  }
  return kExitOk;
}

int DeleteModel(Invocation& inv) { return inv.Deleted(inv.client().DeleteModel(inv.args()[0]), inv.args()[0]); }

int Predict(Invocation& inv) {
  int top_k = 5;
  if (inv.Has("top-k") && (!absl::SimpleAtoi(inv.Flag("top-k"), &top_k) || top_k < 1)) {
    return inv.Refuse("--top-k must be a positive integer");
  }
  const std::vector<std::string> files(inv.args().begin() + 1, inv.args().end());
  auto response = inv.client().Predict(inv.args()[0], files, top_k);
  if (!response.ok()) return inv.Fail(response.status());
  if (inv.json()) {
    std::cout << util::ToJson(*response) << std::endl;
    return kExitOk;
  }
  for (int i = 0; i < response->predictions_size(); ++i) {
    std::cout << files[static_cast<size_t>(i)] << "\n";
    for (const auto& c : response->predictions(i).top()) {
      std::cout << absl::StrFormat("  %-24s %.4f\n", c.label(), c.probability());
    }
  }
  std::cout.flush();
  return kExitOk;
}

}  // namespace ft::client::ftctl
