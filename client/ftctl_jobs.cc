// ftctl's job commands: submit, validate, get, list, watch, cancel, and health.
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "client/ftctl_handlers.h"
#include "common/util/proto_json.h"

namespace ft::client::ftctl {
namespace {

std::string StateName(pb::JobState s) { return pb::JobState_Name(s); }

int PrintJob(Invocation& inv, const absl::StatusOr<pb::Job>& job) {
  if (!job.ok()) return inv.Fail(job.status());
  if (inv.json()) {
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
  if (j.spec().workers() > 1) {
    std::cout << absl::StrFormat("workers   %d, data parallel%s\n", j.spec().workers(),
                                 j.workers_size() > 0 ? absl::StrCat(": ", absl::StrJoin(j.workers(), ", ")) : "");
  }
  std::cout << absl::StrFormat("training  %d epochs, batch %d, %dpx, %s lr %g, seed %d\n",
                               j.spec().epochs(), j.spec().batch_size(), j.spec().image_size(),
                               j.spec().optimizer(), j.spec().learning_rate(), j.spec().seed());
  std::cout << absl::StrFormat("created   %s  started %s  ended %s\n", TimeText(j.create_time()),
                               TimeText(j.start_time()), TimeText(j.end_time()));
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

// Fills a JobSpec from the submit flags (Run() has checked that --dataset
// and --backbone are there); returns an exit code on bad flags.
std::optional<int> BuildSpec(Invocation& inv, pb::JobSpec* out) {
  pb::JobSpec& spec = *out;
  spec.set_dataset_uri(inv.Flag("dataset"));
  spec.set_backbone(inv.Flag("backbone"));
  spec.set_weights_uri(inv.Flag("weights", "none"));
  spec.set_optimizer(inv.Flag("optimizer"));
  spec.set_name(inv.Flag("name"));
  spec.set_augment(inv.Flag("augment"));
  spec.set_class_weights(inv.Flag("class-weights"));
  spec.set_lr_schedule(inv.Flag("lr-schedule"));
  spec.set_cache_features(inv.Flag("cache-features"));
  spec.set_cache_dtype(inv.Flag("cache-dtype"));
  spec.set_on_bad_image(inv.Flag("on-bad-image"));
  spec.set_export_weights(inv.Flag("export"));
  spec.set_nesterov(inv.Flag("nesterov", "false") == "true");
  spec.set_sync_bn(inv.Flag("sync-bn", "false") == "true");
  // A local path is taken as a file:// URI, as users expect.
  if (!absl::StrContains(spec.dataset_uri(), "://")) {
    char buf[4096];
    std::string p = spec.dataset_uri();
    if (!p.empty() && p[0] != '/' && ::getcwd(buf, sizeof(buf))) p = absl::StrCat(buf, "/", p);
    spec.set_dataset_uri(absl::StrCat("file://", p));
  }
  auto int_flag = [&](const std::string& name, auto setter) -> bool {
    if (!inv.Has(name)) return true;
    int64_t v;
    if (!absl::SimpleAtoi(inv.Flag(name), &v) || v < INT32_MIN || v > INT32_MAX) {
      inv.Refuse(absl::StrCat("--", name, " must be an integer, got '", inv.Flag(name), "'"));
      return false;
    }
    setter(v);
    return true;
  };
  if (inv.Flag("freeze-depth") == "all") {
    spec.set_freeze_depth(-1);
  } else if (!int_flag("freeze-depth", [&](int64_t v) { spec.set_freeze_depth(static_cast<int32_t>(v)); })) {
    return kExitRefused;
  }
  if (inv.Flag("finetune-freeze-depth") == "all") {
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
      !int_flag("seed", [&](int64_t v) { spec.set_seed(v); }) ||
      !int_flag("workers", [&](int64_t v) { spec.set_workers(static_cast<int32_t>(v)); }) ||
      !int_flag("checkpoint-interval",
                [&](int64_t v) { spec.set_checkpoint_interval_seconds(static_cast<int32_t>(v)); })) {
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
    if (!inv.Has(flag)) continue;
    float v;
    if (!absl::SimpleAtof(inv.Flag(flag), &v) || !std::isfinite(v)) {
      return inv.Refuse(absl::StrCat("--", flag, " must be a number, got '", inv.Flag(flag), "'"));
    }
    setter(v);
  }
  for (const auto& [flag, field] :
       std::vector<std::pair<std::string, google::protobuf::RepeatedField<float>*>>{
           {"mean", spec.mutable_mean()}, {"std", spec.mutable_std()}}) {
    if (!inv.Has(flag)) continue;
    for (absl::string_view part : absl::StrSplit(inv.Flag(flag), ',')) {
      float v;
      if (!absl::SimpleAtof(part, &v) || !std::isfinite(v)) {
        return inv.Refuse(absl::StrCat("--", flag, " must be 3 comma-separated numbers (R,G,B), got '",
                                       inv.Flag(flag), "'"));
      }
      field->Add(v);
    }
  }
  return std::nullopt;
}

// Streams events; text mode draws a live progress line on a terminal.
int Follow(Invocation& inv, const std::string& job_id, int64_t from) {
  const bool json = inv.json();
  const bool tty = ::isatty(STDOUT_FILENO);
  bool bar_open = false;
  auto end_bar = [&] {
    if (bar_open) std::cout << std::endl;
    bar_open = false;
  };
  auto on_event = [&](const pb::JobEvent& e) {
    if (json) {
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
  auto job = inv.client().Watch(job_id, from, on_event);
  end_bar();
  if (!job.ok()) return inv.Fail(job.status());
  if (json) {
    std::cout << util::ToJson(*job) << std::endl;
  } else {
    PrintJob(inv, job);
  }
  return job->state() == pb::SUCCEEDED ? kExitOk : kExitJobFailed;
}

}  // namespace

int Submit(Invocation& inv) {
  pb::JobSpec spec;
  if (auto rc = BuildSpec(inv, &spec)) return *rc;
  std::string request_id = inv.Flag("request-id");
  if (request_id.empty()) {
    std::random_device rd;
    request_id = absl::StrFormat("ftctl-%08x%08x", rd(), rd());
  }
  auto job = inv.client().Submit(spec, request_id);
  if (!job.ok()) return inv.Fail(job.status());
  if (!inv.Has("follow")) return PrintJob(inv, job);
  if (!inv.json()) std::cout << "submitted " << job->id() << std::endl;
  return Follow(inv, job->id(), 0);
}

int Validate(Invocation& inv) {
  pb::JobSpec spec;
  if (auto rc = BuildSpec(inv, &spec)) return *rc;
  auto report = inv.client().Validate(spec);
  if (!report.ok()) return inv.Fail(report.status());
  if (inv.json()) {
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

int GetJob(Invocation& inv) { return PrintJob(inv, inv.client().Get(inv.args()[0])); }

int ListJobs(Invocation& inv) {
  int limit = 100;
  if (inv.Has("limit") && !absl::SimpleAtoi(inv.Flag("limit"), &limit)) {
    return inv.Refuse("--limit must be an integer");
  }
  auto jobs = inv.client().List(limit, inv.Flag("tenant"));
  if (!jobs.ok()) return inv.Fail(jobs.status());
  if (inv.PrintedAsJson(*jobs, &pb::ListJobsResponse::add_jobs)) return kExitOk;
  const bool tenants = inv.Has("tenant") || SpansTenants(*jobs);
  std::cout << TenantCell(tenants, "TENANT")
            << absl::StrFormat("%-20s %-10s %-10s %-8s %-9s %s\n", "JOB", "STATE", "BACKBONE", "EPOCHS", "VAL_ACC",
                               "NAME");
  for (const auto& j : *jobs) {
    std::cout << TenantCell(tenants, j.tenant()) << absl::StrFormat(
        "%-20s %-10s %-10s %-8s %-9s %s\n", j.id(), StateName(j.state()), j.spec().backbone(),
        absl::StrCat(j.metrics().epochs_completed(), "/", j.spec().epochs()),
        j.metrics().epochs_completed() > 0 ? absl::StrFormat("%.4f", j.metrics().val_accuracy()) : "-",
        j.spec().name());
  }
  return kExitOk;
}

int WatchJob(Invocation& inv) {
  int64_t from = 0;
  if (inv.Has("from") && (!absl::SimpleAtoi(inv.Flag("from"), &from) || from < 0)) {
    return inv.Refuse("--from must be a non-negative sequence number");
  }
  return Follow(inv, inv.args()[0], from);
}

int CancelJob(Invocation& inv) {
  auto job = inv.client().Cancel(inv.args()[0]);
  if (!job.ok()) return inv.Fail(job.status());
  return PrintJob(inv, job);
}

int Health(Invocation& inv) {
  if (auto s = inv.client().Health(); !s.ok()) return inv.Fail(s);
  std::cout << (inv.json() ? "{\"status\":\"SERVING\"}" : "SERVING") << std::endl;
  return kExitOk;
}

}  // namespace ft::client::ftctl
