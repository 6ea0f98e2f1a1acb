// ftctl: the finetuned command-line client.
//
// Exit codes: 0 success (job SUCCEEDED), 1 job FAILED or CANCELLED,
// 2 request refused (bad flags or a server error), 3 server unreachable.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "client/client.h"
#include "client/ftctl_datasets.h"
#include "google/protobuf/util/time_util.h"
#include "common/util/proto_json.h"

namespace ft::client {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitJobFailed = 1;
constexpr int kExitRefused = 2;
constexpr int kExitUnreachable = 3;

constexpr char kUsage[] = R"(usage: ftctl [--server ADDR] [--output text|json] COMMAND [ARGS]

Jobs:
  submit --dataset URI --backbone NAME [--weights pretrained|none|URI]
         [--freeze-depth N|all] [--epochs N] [--batch-size N] [--image-size N]
         [--lr F] [--optimizer adam|adamw|sgd] [--val-split F] [--seed N]
         [--augment standard|light|none] [--name S] [--priority N]
         [--request-id S] [--follow]
       recipe: [--weight-decay F] [--label-smoothing F] [--class-weights balanced]
         [--grad-clip F] [--lr-schedule constant|step|cosine] [--warmup-epochs N]
         [--lr-step-epochs N] [--lr-gamma F] [--momentum F] [--nesterov]
         [--unfreeze-at EPOCH --finetune-freeze-depth N|all --finetune-lr-mult F]
         [--early-stopping PATIENCE] [--cache-features auto|on|off]
         [--on-bad-image fail|skip] [--export best|last]
         [--color-jitter F] [--rotation DEGREES] (with augment standard|light)
         [--mean R,G,B --std R,G,B] (default: from the weights, else ImageNet)
  validate [submit flags]      a dry run of submit: class counts, undecodable
                               files, image sizes, parameters, time per epoch
  get JOB                      show a job
  list [--limit N]             list jobs, newest first
  watch JOB [--from SEQ]       stream a job's events until it ends
  cancel JOB                   cancel a queued or running job
Models:
  models list
  models get MODEL
  models download MODEL --dir DIR
  models delete MODEL
  predict MODEL IMAGE... [--top-k N]   top-k classes of images, run on the server
Datasets (jobs name them --dataset dataset://NAME):
  datasets upload DIR|ARCHIVE --name NAME [--sha256 HEX] [--format tar|tar.gz|zip]
                               a DIR is packed into a tar; an ARCHIVE (.tar,
                               .tar.gz, .zip) is sent as it is
  datasets list
  datasets delete NAME
Other:
  health                       check the server (grpc.health.v1)

--server defaults to $FTCTL_SERVER, then 127.0.0.1:50051.
Exit codes: 0 ok, 1 job failed or cancelled, 2 request refused, 3 server unreachable.
)";

// Parsed command line: positional words and --flag values.
struct Args {
  std::vector<std::string> words;
  std::map<std::string, std::string> flags;
  std::vector<std::string> bool_flags;
};

const std::vector<std::string>& BoolFlags() {
  static const std::vector<std::string> kBool = {"follow", "help", "nesterov"};
  return kBool;
}

absl::StatusOr<Args> Parse(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (absl::StartsWith(a, "--") && a.size() > 2) {
      std::string name = a.substr(2), value;
      bool has_value = false;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      if (std::find(BoolFlags().begin(), BoolFlags().end(), name) != BoolFlags().end()) {
        args.flags[name] = has_value ? value : "true";
        continue;
      }
      if (!has_value) {
        if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
        value = argv[++i];
      }
      args.flags[name] = value;
    } else {
      args.words.push_back(a);
    }
  }
  return args;
}

class Cli {
 public:
  Cli(Args args) : args_(std::move(args)) {}

  int Run() {
    json_ = Flag("output", "text") == "json";
    if (Flag("output", "text") != "json" && Flag("output", "text") != "text") {
      return Refuse("--output must be text or json");
    }
    if (args_.words.empty() || Has("help")) {
      std::cout << kUsage;
      return args_.words.empty() && !Has("help") ? kExitRefused : kExitOk;
    }
    const char* env = std::getenv("FTCTL_SERVER");
    server_ = Flag("server", env && *env ? env : "127.0.0.1:50051");
    client_ = std::make_unique<Client>(server_);
    used_ = {"output", "server"};
    const std::string cmd = args_.words[0];
    int rc;
    if (cmd == "submit") {
      rc = Submit();
    } else if (cmd == "get") {
      rc = WithJobId([this](const std::string& id) { return PrintJob(client_->Get(id)); });
    } else if (cmd == "list") {
      rc = List();
    } else if (cmd == "watch") {
      rc = WithJobId([this](const std::string& id) {
        int64_t from = 0;
        if (Has("from") && (!absl::SimpleAtoi(Flag("from", ""), &from) || from < 0)) {
          return Refuse("--from must be a non-negative sequence number");
        }
        used_.push_back("from");
        return Follow(id, from);
      });
    } else if (cmd == "cancel") {
      rc = WithJobId([this](const std::string& id) {
        auto job = client_->Cancel(id);
        if (!job.ok()) return Fail(job.status());
        return PrintJob(job);
      });
    } else if (cmd == "validate") {
      rc = Validate();
    } else if (cmd == "predict") {
      rc = Predict();
    } else if (cmd == "models") {
      rc = Models();
    } else if (cmd == "datasets") {
      rc = RunDatasetsCommand({args_.words, args_.flags, json_, client_.get(),
                               [this](const std::string& m) { return Refuse(m); },
                               [this](const absl::Status& s) { return Fail(s); },
                               [this](const std::vector<std::string>& allowed) { return CheckFlags(allowed); }});
    } else if (cmd == "health") {
      auto s = client_->Health();
      if (!s.ok()) return Fail(s);
      std::cout << (json_ ? "{\"status\":\"SERVING\"}" : "SERVING") << std::endl;
      rc = kExitOk;
    } else {
      return Refuse(absl::StrCat("unknown command '", cmd, "' (see ftctl --help)"));
    }
    return rc;
  }

 private:
  bool Has(const std::string& f) const { return args_.flags.count(f) > 0; }
  std::string Flag(const std::string& f, const std::string& def) const {
    auto it = args_.flags.find(f);
    return it == args_.flags.end() ? def : it->second;
  }

  int Refuse(const std::string& message) {
    std::cerr << "ftctl: " << message << std::endl;
    return kExitRefused;
  }

  int Fail(const absl::Status& s) {
    if (absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s)) {
      std::cerr << "ftctl: cannot reach finetuned at " << server_ << ": " << s.message() << std::endl;
      return kExitUnreachable;
    }
    std::cerr << "ftctl: " << absl::StatusCodeToString(s.code()) << ": " << s.message() << std::endl;
    return kExitRefused;
  }

  // Rejects flags this command does not take.
  std::optional<int> CheckFlags(const std::vector<std::string>& allowed) {
    for (const auto& [name, value] : args_.flags) {
      if (std::find(used_.begin(), used_.end(), name) == used_.end() &&
          std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
        return Refuse(absl::StrCat("unknown flag --", name, " for '", args_.words[0], "'"));
      }
    }
    return std::nullopt;
  }

  template <typename F>
  int WithJobId(F f) {
    if (auto rc = CheckFlags({"from"})) return *rc;
    if (args_.words.size() != 2) return Refuse(absl::StrCat(args_.words[0], " takes one JOB id"));
    return f(args_.words[1]);
  }

  static std::string StateName(pb::JobState s) { return pb::JobState_Name(s); }

  static std::string Time(const google::protobuf::Timestamp& t) {
    if (t.seconds() == 0) return "-";
    return google::protobuf::util::TimeUtil::ToString(t).substr(0, 19) + "Z";
  }

  int PrintJob(const absl::StatusOr<pb::Job>& job) {
    if (!job.ok()) return Fail(job.status());
    if (json_) {
      std::cout << util::ToJson(*job) << std::endl;
      return kExitOk;
    }
    const pb::Job& j = *job;
    std::cout << absl::StrFormat("job       %s%s\n", j.id(), j.spec().name().empty() ? "" : " (" + j.spec().name() + ")");
    std::cout << absl::StrFormat("state     %s%s (attempt %d)\n", StateName(j.state()),
                                 j.cancel_requested() && j.state() == pb::RUNNING ? ", cancelling" : "",
                                 j.attempts());
    std::cout << absl::StrFormat("backbone  %s, weights %s, freeze_depth %d\n", j.spec().backbone(),
                                 j.spec().weights_uri(), j.spec().freeze_depth());
    std::cout << absl::StrFormat("dataset   %s\n", j.spec().dataset_uri());
    std::cout << absl::StrFormat("training  %d epochs, batch %d, %dpx, %s lr %g, seed %d\n",
                                 j.spec().epochs(), j.spec().batch_size(), j.spec().image_size(),
                                 j.spec().optimizer(), j.spec().learning_rate(), j.spec().seed());
    std::cout << absl::StrFormat("created   %s  started %s  ended %s\n", Time(j.create_time()),
                                 Time(j.start_time()), Time(j.end_time()));
    if (j.metrics().epochs_completed() > 0) {
      std::cout << absl::StrFormat(
          "metrics   val_accuracy %.4f  val_top5 %.4f  val_loss %.4f  train_loss %.4f  best epoch %d of %d\n",
          j.metrics().val_accuracy(), j.metrics().val_top5_accuracy(), j.metrics().val_loss(),
          j.metrics().train_loss(), j.metrics().best_epoch(), j.metrics().epochs_completed());
    }
    if (j.metrics().has_test()) {
      std::cout << absl::StrFormat("test      accuracy %.4f  top5 %.4f  loss %.4f\n", j.metrics().test_accuracy(),
                                   j.metrics().test_top5_accuracy(), j.metrics().test_loss());
      for (const auto& c : j.metrics().test_per_class()) {
        std::cout << absl::StrFormat("          %-16s precision %.3f  recall %.3f  f1 %.3f  (n=%d)\n", c.name(),
                                     c.precision(), c.recall(), c.f1(), c.support());
      }
    }
    if (!j.model_id().empty()) std::cout << "model     " << j.model_id() << "\n";
    if (!j.error().empty()) std::cout << "error     " << j.error() << "\n";
    std::cout.flush();
    return kExitOk;
  }

  // Fills a JobSpec from the submit flags; returns an exit code on bad flags.
  std::optional<int> BuildSpec(pb::JobSpec* out) {
    pb::JobSpec& spec = *out;
    spec.set_dataset_uri(Flag("dataset", ""));
    spec.set_backbone(Flag("backbone", ""));
    spec.set_weights_uri(Flag("weights", "none"));
    spec.set_optimizer(Flag("optimizer", ""));
    spec.set_name(Flag("name", ""));
    spec.set_augment(Flag("augment", ""));
    spec.set_class_weights(Flag("class-weights", ""));
    spec.set_lr_schedule(Flag("lr-schedule", ""));
    spec.set_cache_features(Flag("cache-features", ""));
    spec.set_on_bad_image(Flag("on-bad-image", ""));
    spec.set_export_weights(Flag("export", ""));
    spec.set_nesterov(Flag("nesterov", "false") == "true");
    if (spec.dataset_uri().empty()) return Refuse("submit needs --dataset URI");
    if (spec.backbone().empty()) return Refuse("submit needs --backbone NAME");
    // A local path is taken as a file:// URI, as users expect.
    if (!absl::StrContains(spec.dataset_uri(), "://")) {
      char buf[4096];
      std::string p = spec.dataset_uri();
      if (!p.empty() && p[0] != '/' && ::getcwd(buf, sizeof(buf))) p = absl::StrCat(buf, "/", p);
      spec.set_dataset_uri(absl::StrCat("file://", p));
    }
    auto int_flag = [&](const std::string& name, auto setter) -> bool {
      if (!Has(name)) return true;
      int64_t v;
      if (!absl::SimpleAtoi(Flag(name, ""), &v) || v < INT32_MIN || v > INT32_MAX) {
        Refuse(absl::StrCat("--", name, " must be an integer, got '", Flag(name, ""), "'"));
        return false;
      }
      setter(v);
      return true;
    };
    if (Has("freeze-depth") && Flag("freeze-depth", "") == "all") {
      spec.set_freeze_depth(-1);
    } else if (!int_flag("freeze-depth", [&](int64_t v) { spec.set_freeze_depth(static_cast<int32_t>(v)); })) {
      return kExitRefused;
    }
    if (Has("finetune-freeze-depth") && Flag("finetune-freeze-depth", "") == "all") {
      spec.set_finetune_freeze_depth(-1);
    } else if (!int_flag("finetune-freeze-depth",
                         [&](int64_t v) { spec.set_finetune_freeze_depth(static_cast<int32_t>(v)); })) {
      return kExitRefused;
    }
    if (!int_flag("warmup-epochs", [&](int64_t v) { spec.set_warmup_epochs(static_cast<int32_t>(v)); }) ||
        !int_flag("lr-step-epochs", [&](int64_t v) { spec.set_lr_step_epochs(static_cast<int32_t>(v)); }) ||
        !int_flag("unfreeze-at", [&](int64_t v) { spec.set_unfreeze_at(static_cast<int32_t>(v)); }) ||
        !int_flag("early-stopping", [&](int64_t v) { spec.set_early_stopping_patience(static_cast<int32_t>(v)); })) {
      return kExitRefused;
    }
    if (!int_flag("epochs", [&](int64_t v) { spec.set_epochs(static_cast<int32_t>(v)); }) ||
        !int_flag("batch-size", [&](int64_t v) { spec.set_batch_size(static_cast<int32_t>(v)); }) ||
        !int_flag("image-size", [&](int64_t v) { spec.set_image_size(static_cast<int32_t>(v)); }) ||
        !int_flag("priority", [&](int64_t v) { spec.set_priority(static_cast<int32_t>(v)); }) ||
        !int_flag("seed", [&](int64_t v) { spec.set_seed(v); })) {
      return kExitRefused;
    }
    for (const auto& [flag, setter] :
         std::vector<std::pair<std::string, std::function<void(float)>>>{
             {"lr", [&](float v) { spec.set_learning_rate(v); }},
             {"val-split", [&](float v) { spec.set_val_split(v); }},
             {"weight-decay", [&](float v) { spec.set_weight_decay(v); }},
             {"label-smoothing", [&](float v) { spec.set_label_smoothing(v); }},
             {"grad-clip", [&](float v) { spec.set_grad_clip_norm(v); }},
             {"lr-gamma", [&](float v) { spec.set_lr_gamma(v); }},
             {"momentum", [&](float v) { spec.set_momentum(v); }},
             {"finetune-lr-mult", [&](float v) { spec.set_finetune_lr_mult(v); }},
             {"color-jitter", [&](float v) { spec.set_color_jitter(v); }},
             {"rotation", [&](float v) { spec.set_rotation_degrees(v); }}}) {
      if (!Has(flag)) continue;
      float v;
      if (!absl::SimpleAtof(Flag(flag, ""), &v) || !std::isfinite(v)) {
        return Refuse(absl::StrCat("--", flag, " must be a number, got '", Flag(flag, ""), "'"));
      }
      setter(v);
    }
    for (const auto& [flag, field] :
         std::vector<std::pair<std::string, google::protobuf::RepeatedField<float>*>>{
             {"mean", spec.mutable_mean()}, {"std", spec.mutable_std()}}) {
      if (!Has(flag)) continue;
      for (absl::string_view part : absl::StrSplit(Flag(flag, ""), ',')) {
        float v;
        if (!absl::SimpleAtof(part, &v) || !std::isfinite(v)) {
          return Refuse(absl::StrCat("--", flag, " must be 3 comma-separated numbers (R,G,B), got '",
                                     Flag(flag, ""), "'"));
        }
        field->Add(v);
      }
    }
    return std::nullopt;
  }

  static const std::vector<std::string>& SubmitFlags() {
    static const auto* kFlags = new std::vector<std::string>{
        "dataset", "backbone", "weights", "freeze-depth", "epochs", "batch-size", "image-size", "lr",
        "optimizer", "val-split", "seed", "name", "priority", "request-id", "follow", "augment",
        "weight-decay", "label-smoothing", "class-weights", "grad-clip", "lr-schedule", "warmup-epochs",
        "lr-step-epochs", "lr-gamma", "momentum", "nesterov", "unfreeze-at", "finetune-freeze-depth",
        "finetune-lr-mult", "early-stopping", "cache-features", "on-bad-image", "export", "color-jitter",
        "rotation", "mean", "std"};
    return *kFlags;
  }

  int Validate() {
    if (auto rc = CheckFlags(SubmitFlags())) return *rc;
    if (args_.words.size() != 1) return Refuse("validate takes flags only");
    pb::JobSpec spec;
    if (auto rc = BuildSpec(&spec)) return *rc;
    auto report = client_->Validate(spec);
    if (!report.ok()) return Fail(report.status());
    if (json_) {
      std::cout << util::ToJson(*report) << std::endl;
      return kExitOk;
    }
    const auto& r = *report;
    std::cout << absl::StrFormat("dataset   %s (%s; val: %s)\n", r.spec().dataset_uri(), r.dataset_format(),
                                 r.val_source());
    std::cout << absl::StrFormat("%-20s %8s %8s %8s\n", "CLASS", "TRAIN", "VAL", "TEST");
    for (const auto& c : r.classes()) {
      std::cout << absl::StrFormat("%-20s %8d %8d %8d\n", c.name(), c.train(), c.val(), c.test());
    }
    std::cout << absl::StrFormat("imbalance %.2fx (largest / smallest training class)\n", r.imbalance_ratio());
    const auto& sz = r.image_sizes();
    std::cout << absl::StrFormat("images    %d decodable (%d grayscale), %d undecodable%s\n", sz.images(),
                                 sz.grayscale(), r.undecodable(),
                                 r.undecodable_examples().empty()
                                     ? ""
                                     : ": " + absl::StrJoin(r.undecodable_examples(), ", "));
    std::cout << absl::StrFormat("sizes     %dx%d to %dx%d, mean %.0fx%.0f\n", sz.min_width(), sz.min_height(),
                                 sz.max_width(), sz.max_height(), sz.mean_width(), sz.mean_height());
    std::cout << absl::StrFormat("model     %s: %d trainable, %d frozen parameters (freeze_depth %d)\n",
                                 r.spec().backbone(), r.trainable_parameters(), r.frozen_parameters(),
                                 r.spec().freeze_depth());
    std::cout << absl::StrFormat("estimate  %.1f s per epoch on %s; queue position %d\n",
                                 r.estimated_epoch_seconds(), r.estimate_device(), r.queue_position());
    for (const auto& w : r.warnings()) std::cout << "warning   " << w << "\n";
    std::cout.flush();
    return kExitOk;
  }

  int Predict() {
    if (auto rc = CheckFlags({"top-k"})) return *rc;
    if (args_.words.size() < 3) return Refuse("predict takes a MODEL id and one or more IMAGE files");
    int top_k = 5;
    if (Has("top-k") && (!absl::SimpleAtoi(Flag("top-k", ""), &top_k) || top_k < 1)) {
      return Refuse("--top-k must be a positive integer");
    }
    std::vector<std::string> files(args_.words.begin() + 2, args_.words.end());
    auto response = client_->Predict(args_.words[1], files, top_k);
    if (!response.ok()) return Fail(response.status());
    if (json_) {
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

  int Submit() {
    if (auto rc = CheckFlags(SubmitFlags())) return *rc;
    if (args_.words.size() != 1) return Refuse("submit takes flags only");
    pb::JobSpec spec;
    if (auto rc = BuildSpec(&spec)) return *rc;
    std::string request_id = Flag("request-id", "");
    if (request_id.empty()) {
      std::random_device rd;
      request_id = absl::StrFormat("ftctl-%08x%08x", rd(), rd());
    }
    auto job = client_->Submit(spec, request_id);
    if (!job.ok()) return Fail(job.status());
    if (!Has("follow")) return PrintJob(job);
    if (!json_) std::cout << "submitted " << job->id() << std::endl;
    return Follow(job->id(), 0);
  }

  int List() {
    if (auto rc = CheckFlags({"limit"})) return *rc;
    int limit = 100;
    if (Has("limit") && !absl::SimpleAtoi(Flag("limit", ""), &limit)) return Refuse("--limit must be an integer");
    auto jobs = client_->List(limit);
    if (!jobs.ok()) return Fail(jobs.status());
    if (json_) {
      pb::ListJobsResponse resp;
      for (auto& j : *jobs) *resp.add_jobs() = j;
      std::cout << util::ToJson(resp) << std::endl;
      return kExitOk;
    }
    std::cout << absl::StrFormat("%-20s %-10s %-10s %-8s %-9s %s\n", "JOB", "STATE", "BACKBONE", "EPOCHS",
                                 "VAL_ACC", "NAME");
    for (const auto& j : *jobs) {
      std::cout << absl::StrFormat(
          "%-20s %-10s %-10s %-8s %-9s %s\n", j.id(), StateName(j.state()), j.spec().backbone(),
          absl::StrCat(j.metrics().epochs_completed(), "/", j.spec().epochs()),
          j.metrics().epochs_completed() > 0 ? absl::StrFormat("%.4f", j.metrics().val_accuracy()) : "-",
          j.spec().name());
    }
    return kExitOk;
  }

  int Models() {
    if (args_.words.size() < 2) return Refuse("models needs list, get, download or delete");
    const std::string sub = args_.words[1];
    if (sub == "list") {
      if (auto rc = CheckFlags({})) return *rc;
      auto models = client_->ListModels();
      if (!models.ok()) return Fail(models.status());
      if (json_) {
        pb::ListModelsResponse resp;
        for (auto& m : *models) *resp.add_models() = m;
        std::cout << util::ToJson(resp) << std::endl;
        return kExitOk;
      }
      std::cout << absl::StrFormat("%-18s %-20s %-10s %-8s %-9s %s\n", "MODEL", "JOB", "BACKBONE", "CLASSES",
                                   "VAL_ACC", "SIZE");
      for (const auto& m : *models) {
        std::cout << absl::StrFormat("%-18s %-20s %-10s %-8d %-9.4f %.1f MB\n", m.id(), m.job_id(), m.backbone(),
                                     m.classes_size(), m.metrics().val_accuracy(), m.size_bytes() / 1e6);
      }
      return kExitOk;
    }
    if (args_.words.size() != 3) return Refuse(absl::StrCat("models ", sub, " takes one MODEL id"));
    const std::string id = args_.words[2];
    if (sub == "get") {
      if (auto rc = CheckFlags({})) return *rc;
      auto model = client_->GetModel(id);
      if (!model.ok()) return Fail(model.status());
      std::cout << util::ToJson(*model) << std::endl;
      return kExitOk;
    }
    if (sub == "delete") {
      if (auto rc = CheckFlags({})) return *rc;
      auto s = client_->DeleteModel(id);
      if (!s.ok()) return Fail(s);
      if (!json_) std::cout << "deleted " << id << std::endl;
      return kExitOk;
    }
    if (sub == "download") {
      if (auto rc = CheckFlags({"dir"})) return *rc;
      if (!Has("dir")) return Refuse("models download needs --dir DIR");
      auto files = client_->DownloadModel(id, Flag("dir", ""));
      if (!files.ok()) return Fail(files.status());
      if (json_) {
        std::cout << "{\"files\":[\"" << absl::StrJoin(*files, "\",\"") << "\"]}" << std::endl;
      } else {
        for (const auto& f : *files) std::cout << f << std::endl;
      }
      return kExitOk;
    }
    return Refuse(absl::StrCat("unknown models command '", sub, "'"));
  }

  // Streams events; text mode draws a live progress line on a terminal.
  int Follow(const std::string& job_id, int64_t from) {
    const bool tty = ::isatty(STDOUT_FILENO);
    bool bar_open = false;
    auto end_bar = [&] {
      if (bar_open) std::cout << std::endl;
      bar_open = false;
    };
    auto on_event = [&](const pb::JobEvent& e) {
      if (json_) {
        std::cout << util::ToJson(e) << std::endl;
        return;
      }
      if (e.has_progress()) {
        const auto& p = e.progress();
        std::string line;
        if (p.phase() == "train") {
          const int width = 24;
          const int filled = p.steps_per_epoch() > 0
                                 ? static_cast<int>(width * p.step() / p.steps_per_epoch())
                                 : 0;
          const int eta = static_cast<int>(p.eta_seconds());
          line = absl::StrFormat("epoch %d/%d [%s%s] step %d/%d  loss %.4f  %.0f img/s  ETA %d:%02d",
                                 p.epoch(), p.epochs(), std::string(filled, '#'),
                                 std::string(width - filled, '.'), p.step(), p.steps_per_epoch(), p.loss(),
                                 p.images_per_second(), eta / 60, eta % 60);
        } else if (p.phase() == "validate") {
          line = absl::StrFormat("epoch %d/%d validating...", p.epoch(), p.epochs());
        } else {
          line = absl::StrCat(p.phase(), "...");
        }
        if (tty) {
          std::cout << "\r\033[K" << line << std::flush;
          bar_open = true;
        } else {
          std::cout << line << std::endl;
        }
        return;
      }
      end_bar();
      if (e.has_epoch()) {
        const auto& s = e.epoch();
        std::cout << absl::StrFormat(
                         "epoch %d: train_loss %.4f train_acc %.4f | val_loss %.4f val_acc %.4f top5 %.4f | lr %.2g"
                         " | %.0f img/s, %.1fs (loader wait %.1fs)%s%s",
                         s.epoch(), s.train_loss(), s.train_accuracy(), s.val_loss(), s.val_accuracy(),
                         s.val_top5_accuracy(), s.learning_rate(), s.images_per_second(), s.epoch_seconds(),
                         s.loader_wait_seconds(), s.features_cached() ? " [cached features]" : "",
                         s.best() ? " *best" : "")
                  << std::endl;
      } else if (e.has_state_changed()) {
        std::cout << "[" << StateName(e.state_changed().state()) << "] " << e.state_changed().message()
                  << std::endl;
      } else if (e.has_log()) {
        std::cout << e.log().level() << ": " << e.log().message() << std::endl;
      }
    };
    auto job = client_->Watch(job_id, from, on_event);
    end_bar();
    if (!job.ok()) return Fail(job.status());
    if (json_) {
      std::cout << util::ToJson(*job) << std::endl;
    } else {
      PrintJob(job);
    }
    return job->state() == pb::SUCCEEDED ? kExitOk : kExitJobFailed;
  }

  Args args_;
  bool json_ = false;
  std::string server_;
  std::unique_ptr<Client> client_;
  std::vector<std::string> used_;
};

}  // namespace
}  // namespace ft::client

int main(int argc, char** argv) {
  auto args = ft::client::Parse(argc, argv);
  if (!args.ok()) {
    std::cerr << "ftctl: " << args.status().message() << std::endl;
    return ft::client::kExitRefused;
  }
  return ft::client::Cli(*std::move(args)).Run();
}
