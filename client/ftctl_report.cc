// ftctl's report command: a finished job's curves, confusion matrix,
// per-class metrics, misclassified images, spec and timings, as one HTML
// page that needs nothing else (data: URIs, inline CSS, no script) and the
// charts as PNG files beside it.
#include "client/ftctl_report.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/ftctl_handlers.h"
#include "client/report_charts.h"
#include "common/util/files.h"
#include "common/util/proto_json.h"
#include "common/util/status.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/time_util.h"

namespace ft::client::ftctl {
namespace {

using google::protobuf::RepeatedField;
using google::protobuf::RepeatedPtrField;
using google::protobuf::util::TimeUtil;

// Device pixels per logical pixel of the charts.
constexpr int kChartScale = 2;
// The most confused class pairs listed.
constexpr size_t kTopConfusedPairs = 10;
// Past these many classes the heat map and the bar chart (at least 10 and
// 16 px a class) grow too large to draw, and the confusion table too long
// to read; the per-class table and the confused pairs stay.
constexpr size_t kMaxChartClasses = 200;
constexpr size_t kMaxConfusionTableClasses = 50;

constexpr report::Rgb kTrainColour = 0x1f77b4;
constexpr report::Rgb kValColour = 0xff7f0e;

std::string Html(absl::string_view text) {
  std::string out;
  for (char ch : text) {
    switch (ch) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += ch;
    }
  }
  return out;
}

std::string Fixed(double v, int decimals = 4) { return absl::StrFormat("%.*f", decimals, v); }

std::string DataUri(absl::string_view mime, absl::string_view bytes) {
  return absl::StrCat("data:", mime, ";base64,", absl::Base64Escape(bytes));
}

// A PNG's width in pixels, from its IHDR chunk (0 when it is not a PNG).
int PngWidth(const std::string& png) {
  if (png.size() < 24 || png.compare(1, 3, "PNG") != 0) return 0;
  int w = 0;
  for (int i = 16; i < 20; ++i) w = (w << 8) | static_cast<unsigned char>(png[static_cast<size_t>(i)]);
  return w;
}

std::string Seconds(double s) {
  if (s < 60) return absl::StrFormat("%.1f s", s);
  const int64_t total = static_cast<int64_t>(s + 0.5);
  if (total < 3600) return absl::StrFormat("%d min %02d s", total / 60, total % 60);
  return absl::StrFormat("%d h %02d min", total / 3600, total % 3600 / 60);
}

bool HasTime(const google::protobuf::Timestamp& t) { return t.seconds() != 0 || t.nanos() != 0; }

double Between(const google::protobuf::Timestamp& a, const google::protobuf::Timestamp& b) {
  return TimeUtil::DurationToNanoseconds(b - a) / 1e9;
}

// A spec field's value as text.
std::string FieldText(const google::protobuf::Message& m, const google::protobuf::FieldDescriptor* f) {
  using FD = google::protobuf::FieldDescriptor;
  const auto* r = m.GetReflection();
  auto one = [&](int i) -> std::string {
    const bool rep = f->is_repeated();
    switch (f->cpp_type()) {
      case FD::CPPTYPE_INT32: return absl::StrCat(rep ? r->GetRepeatedInt32(m, f, i) : r->GetInt32(m, f));
      case FD::CPPTYPE_INT64: return absl::StrCat(rep ? r->GetRepeatedInt64(m, f, i) : r->GetInt64(m, f));
      case FD::CPPTYPE_UINT32: return absl::StrCat(rep ? r->GetRepeatedUInt32(m, f, i) : r->GetUInt32(m, f));
      case FD::CPPTYPE_UINT64: return absl::StrCat(rep ? r->GetRepeatedUInt64(m, f, i) : r->GetUInt64(m, f));
      case FD::CPPTYPE_FLOAT:
        return absl::StrFormat("%g", rep ? r->GetRepeatedFloat(m, f, i) : r->GetFloat(m, f));
      case FD::CPPTYPE_DOUBLE:
        return absl::StrFormat("%g", rep ? r->GetRepeatedDouble(m, f, i) : r->GetDouble(m, f));
      case FD::CPPTYPE_BOOL: return (rep ? r->GetRepeatedBool(m, f, i) : r->GetBool(m, f)) ? "true" : "false";
      case FD::CPPTYPE_ENUM: return rep ? r->GetRepeatedEnum(m, f, i)->name() : r->GetEnum(m, f)->name();
      case FD::CPPTYPE_STRING: return rep ? r->GetRepeatedString(m, f, i) : r->GetString(m, f);
      case FD::CPPTYPE_MESSAGE: return util::ToJson(rep ? r->GetRepeatedMessage(m, f, i) : r->GetMessage(m, f));
    }
    return "";
  };
  if (!f->is_repeated()) {
    if (f->has_presence() && !r->HasField(m, f)) return "";
    return one(0);
  }
  std::vector<std::string> parts;
  for (int i = 0; i < r->FieldSize(m, f); ++i) parts.push_back(one(i));
  return absl::StrJoin(parts, ", ");
}

// The figures of one evaluated split: the test split, or for a dataset
// without one the validation split (JobMetrics.val_*).
struct SplitView {
  std::string key;    // "test" or "val"
  std::string title;  // as the page names it
  const RepeatedPtrField<pb::ClassMetrics>* per_class = nullptr;
  const RepeatedField<int64_t>* confusion = nullptr;
  const RepeatedPtrField<pb::Misclassified>* misclassified = nullptr;
};

std::optional<SplitView> EvaluatedSplit(const pb::JobMetrics& m) {
  if (m.has_test() && m.test_per_class_size() > 0) {
    return SplitView{"test", "test split", &m.test_per_class(), &m.test_confusion(), &m.test_misclassified()};
  }
  if (m.val_per_class_size() > 0) {
    return SplitView{"val", "validation split", &m.val_per_class(), &m.val_confusion(), &m.val_misclassified()};
  }
  return std::nullopt;
}

// The event log, read as the report needs it.
struct History {
  std::map<int, pb::EpochSummary> epochs;  // the latest summary of each epoch
  // The training curve by global step (the last step a point stands for):
  // the loss, and the learning rate when `exact`.
  std::map<int64_t, double> step_loss, step_lr;
  std::vector<double> epoch_ends;  // the global step at each epoch's end
  // From the epochs' own record of each step (EpochSummary.step_losses);
  // otherwise from progress events, each the running mean of its epoch.
  bool exact = false;
  int64_t events = 0;
  int64_t warnings = 0;
};

History ReadHistory(const std::vector<pb::JobEvent>& events) {
  History h;
  h.events = static_cast<int64_t>(events.size());
  std::map<int64_t, double> progress_loss;
  int64_t steps_per_epoch = 0;
  for (const pb::JobEvent& e : events) {
    if (e.has_epoch()) h.epochs[e.epoch().epoch()] = e.epoch();
    if (e.has_log() && e.log().level() == "warning") ++h.warnings;
    if (e.has_progress() && e.progress().phase() == "train" && e.progress().steps_per_epoch() > 0 &&
        e.progress().epoch() > 0) {
      const pb::Progress& p = e.progress();
      steps_per_epoch = p.steps_per_epoch();
      // A resumed attempt repeats steps: the latest report of a step stands.
      progress_loss[(p.epoch() - 1) * p.steps_per_epoch() + p.step()] = p.loss();
    }
  }
  // Jobs of workers before the per-step record have progress events only.
  h.exact = !h.epochs.empty() && std::all_of(h.epochs.begin(), h.epochs.end(), [](const auto& e) {
    return e.second.steps() > 0 && e.second.step_losses_size() > 0 &&
           e.second.step_losses_size() == e.second.step_learning_rates_size();
  });
  if (h.exact) {
    int64_t offset = 0;
    for (const auto& [epoch, s] : h.epochs) {
      const int64_t per_point = std::max(1, s.steps_per_point());
      for (int i = 0; i < s.step_losses_size(); ++i) {
        const int64_t x = offset + std::min<int64_t>((i + 1) * per_point, s.steps());
        h.step_loss[x] = s.step_losses(i);
        h.step_lr[x] = s.step_learning_rates(i);
      }
      offset += s.steps();
      h.epoch_ends.push_back(static_cast<double>(offset));
    }
  } else {
    h.step_loss = std::move(progress_loss);
    for (const auto& [epoch, s] : h.epochs) h.epoch_ends.push_back(static_cast<double>(epoch * steps_per_epoch));
  }
  return h;
}

// A diverging job's last figures may be NaN or infinite: they are left out
// of the curves (the tables show them).
void AddPoint(report::Series* series, double x, double y) {
  if (!std::isfinite(y)) return;
  series->x.push_back(x);
  series->y.push_back(y);
}

// One chart of the page: its file name, PNG and caption.
struct Chart {
  std::string file;  // "loss.png"
  std::string alt;
  std::string png;
  std::string error;  // why it could not be drawn, instead
};

Chart MakeChart(std::string file, std::string alt, const absl::StatusOr<std::string>& png) {
  Chart c{std::move(file), std::move(alt), "", ""};
  if (png.ok()) {
    c.png = *png;
  } else {
    c.error = std::string(png.status().message());
  }
  return c;
}

std::string ChartHtml(const Chart& c) {
  if (!c.error.empty()) {
    return absl::StrCat("<figure class=\"chart\"><p class=\"note\">", Html(c.alt), ": not drawn (",
                        Html(c.error), ")</p></figure>\n");
  }
  const int width = PngWidth(c.png) / kChartScale;
  return absl::StrCat("<figure class=\"chart\"><img data-chart=\"", Html(c.file), "\" src=\"",
                      DataUri("image/png", c.png), "\" alt=\"", Html(c.alt), "\" style=\"max-width:", width,
                      "px\"></figure>\n");
}

std::string Card(absl::string_view label, absl::string_view value, absl::string_view field,
                 absl::string_view detail = "") {
  return absl::StrCat("<div class=\"card\"><div class=\"label\">", Html(label), "</div><div class=\"value\"",
                      field.empty() ? "" : absl::StrCat(" data-field=\"", field, "\""), ">", Html(value),
                      "</div>", detail.empty() ? "" : absl::StrCat("<div class=\"detail\">", Html(detail), "</div>"),
                      "</div>");
}

constexpr char kStyle[] = R"css(
body{font-family:"DejaVu Sans",Verdana,Arial,sans-serif;color:#222;margin:0;background:#f4f5f7}
main{max-width:1200px;margin:0 auto;padding:24px 28px 48px;background:#fff}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:36px 0 10px;border-bottom:2px solid #e3e5e8;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 8px}
.sub{color:#555;font-size:13px;margin:0 0 16px;word-break:break-all}
.state{display:inline-block;padding:2px 8px;border-radius:4px;font-size:12px;font-weight:bold;color:#fff;
  background:#2ca02c}
.state.FAILED,.state.CANCELLED{background:#d62728}
.banner{background:#fdecea;border:1px solid #f5c2c0;padding:10px 14px;border-radius:6px;margin:12px 0}
.note{color:#555;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #e3e5e8;border-radius:6px;padding:10px 14px;min-width:140px}
.card .label{font-size:12px;color:#666}.card .value{font-size:22px;font-weight:bold;margin-top:2px}
.card .detail{font-size:11px;color:#777}
.charts{display:flex;flex-wrap:wrap;gap:16px}
figure.chart{margin:0;flex:1 1 560px;max-width:100%}figure.chart img{width:100%;height:auto;display:block}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #e3e5e8;padding:4px 8px;text-align:left}th{background:#f7f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.confusion td{text-align:right;min-width:28px}table.confusion td.diag{font-weight:bold;background:#eef4fb}
.spec{display:flex;flex-wrap:wrap;gap:0 24px;align-items:flex-start}.spec table{flex:1 1 420px}
.spec th{width:45%}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure.mis{margin:0;width:150px;border:1px solid #e3e5e8;border-radius:6px;padding:6px;font-size:12px}
figure.mis img{display:block;margin:0 auto 4px;max-width:96px;max-height:96px;image-rendering:pixelated}
figure.mis .true{color:#2a7a2a}figure.mis .pred{color:#b02020}
figure.mis .path{color:#777;font-size:10px;word-break:break-all}
figcaption span{display:block}
footer{margin-top:40px;color:#777;font-size:12px}
)css";

}  // namespace

absl::StatusOr<ReportFiles> WriteReport(const ReportData& data, const std::string& dir) {
  const pb::Job& job = data.job;
  const pb::JobMetrics& m = job.metrics();
  const History history = ReadHistory(data.events);
  const std::optional<SplitView> split = EvaluatedSplit(m);

  // Class names: given, else from the per-class figures, else numbers.
  std::vector<std::string> classes = data.classes;
  if (classes.empty() && split) {
    for (const auto& c : *split->per_class) classes.push_back(c.name());
  }
  auto class_name = [&](int64_t i) {
    return i >= 0 && static_cast<size_t>(i) < classes.size() ? classes[static_cast<size_t>(i)]
                                                              : absl::StrCat("class ", i);
  };

  // The charts.
  std::vector<Chart> curves;
  std::vector<Chart> evaluation;
  if (!history.epochs.empty()) {
    auto per_epoch = [](const char* title, const char* y_label) {
      report::LineChart chart;
      chart.title = title;
      chart.x_label = "epoch";
      chart.y_label = y_label;
      chart.integer_x = true;
      return chart;
    };
    report::LineChart loss = per_epoch("Loss per epoch", "cross-entropy loss");
    report::LineChart acc = per_epoch("Accuracy per epoch", "top-1 accuracy");
    acc.y_min = 0.0;
    acc.y_max = 1.0;
    report::LineChart lr = per_epoch("Learning rate", "learning rate");
    report::Series train_loss("train", kTrainColour), val_loss("val", kValColour);
    report::Series train_acc("train", kTrainColour), val_acc("val", kValColour);
    report::Series val_top5("val top-5", kValColour, /*dashed=*/true);
    report::Series rate("at each epoch's last step", report::PaletteColour(2));
    for (const auto& [epoch, s] : history.epochs) {
      AddPoint(&train_loss, epoch, s.train_loss());
      AddPoint(&val_loss, epoch, s.val_loss());
      AddPoint(&train_acc, epoch, s.train_accuracy());
      AddPoint(&val_acc, epoch, s.val_accuracy());
      AddPoint(&val_top5, epoch, s.val_top5_accuracy());
      AddPoint(&rate, epoch, s.learning_rate());
    }
    loss.series = {train_loss, val_loss};
    acc.series = {train_acc, val_acc};
    // Top-5 of five classes or fewer is always 1.
    if (classes.empty() || classes.size() > 5) acc.series.push_back(val_top5);
    lr.series = {rate};
    curves.push_back(MakeChart("loss.png", "loss per epoch, train and val", report::RenderLineChart(loss)));
    curves.push_back(MakeChart("accuracy.png", "accuracy per epoch, train and val", report::RenderLineChart(acc)));
    if (!history.step_loss.empty()) {
      report::LineChart steps;
      steps.title = "Training loss per step";
      steps.x_label = "step";
      steps.y_label = history.exact ? "loss of the step" : "loss (running mean over the epoch)";
      report::Series s("train", kTrainColour);
      for (const auto& [step, value] : history.step_loss) AddPoint(&s, static_cast<double>(step), value);
      steps.series = {s};
      steps.x_marks = history.epoch_ends;
      curves.push_back(MakeChart("step_loss.png", "training loss per step", report::RenderLineChart(steps)));
    }
    if (history.exact) {
      // The schedule as it ran: warm-up, steps and cosine show within epochs.
      lr.title = "Learning rate per step";
      lr.x_label = "step";
      lr.integer_x = false;
      report::Series per_step("at each step", report::PaletteColour(2));
      for (const auto& [step, value] : history.step_lr) AddPoint(&per_step, static_cast<double>(step), value);
      lr.series = {per_step};
      lr.x_marks = history.epoch_ends;
      curves.push_back(MakeChart("learning_rate.png", "learning rate per step", report::RenderLineChart(lr)));
    } else {
      curves.push_back(MakeChart("learning_rate.png", "learning rate per epoch", report::RenderLineChart(lr)));
    }
  }
  if (split && split->confusion->size() > 0 &&
      static_cast<size_t>(split->per_class->size()) <= kMaxChartClasses) {
    report::HeatMap heat;
    heat.title = absl::StrCat("Confusion matrix (", split->title, ")");
    const size_t n = static_cast<size_t>(split->per_class->size());
    for (size_t i = 0; i < n; ++i) heat.labels.push_back(class_name(static_cast<int64_t>(i)));
    heat.cells.assign(split->confusion->begin(), split->confusion->end());
    evaluation.push_back(MakeChart("confusion.png", "confusion matrix", report::RenderHeatMap(heat)));
    report::BarChart bars;
    bars.title = absl::StrCat("Per-class precision, recall and F1 (", split->title, ")");
    bars.y_label = "score";
    bars.categories = heat.labels;
    report::Series p("precision", report::PaletteColour(0)), r("recall", report::PaletteColour(1)),
        f("F1", report::PaletteColour(2));
    for (const auto& c : *split->per_class) {
      p.y.push_back(c.precision());
      r.y.push_back(c.recall());
      f.y.push_back(c.f1());
    }
    bars.groups = {p, r, f};
    evaluation.push_back(
        MakeChart("per_class.png", "per-class precision, recall and F1", report::RenderBarChart(bars)));
  }

  // The page.
  std::string h;
  const std::string title = job.spec().name().empty() ? job.id() : absl::StrCat(job.spec().name(), " (", job.id(), ")");
  absl::StrAppend(&h, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
                  "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
                  "style-src 'unsafe-inline'\">",
                  "<title>Report: ", Html(title), "</title><style>", kStyle, "</style></head><body><main>\n");
  absl::StrAppend(&h, "<h1>Job report: ", Html(title), "</h1>\n<p class=\"sub\"><span class=\"state ",
                  pb::JobState_Name(job.state()), "\" data-field=\"state\">", pb::JobState_Name(job.state()),
                  "</span> &nbsp;", Html(job.spec().backbone()), " on ", Html(job.spec().dataset_uri()),
                  job.model_id().empty() ? "" : absl::StrCat(" &middot; model ", Html(job.model_id())),
                  " &middot; tenant ", Html(job.tenant().empty() ? "default" : job.tenant()), "</p>\n");
  if (job.state() != pb::SUCCEEDED) {
    absl::StrAppend(&h, "<div class=\"banner\" data-field=\"error\">This job ended ",
                    pb::JobState_Name(job.state()), job.error().empty() ? "" : ": ", Html(job.error()),
                    ". The report shows what it recorded before that.</div>\n");
  }

  // Summary cards.
  absl::StrAppend(&h, "<div class=\"cards\" id=\"summary\">");
  if (m.epochs_completed() > 0) {
    const std::string of_epoch = absl::StrCat("epoch ", m.best_epoch(), " of ", m.epochs_completed());
    absl::StrAppend(&h, Card("val accuracy", Fixed(m.val_accuracy()), "val_accuracy", of_epoch),
                    Card("val top-5", Fixed(m.val_top5_accuracy()), "val_top5_accuracy"),
                    Card("val loss", Fixed(m.val_loss()), "val_loss"),
                    Card("train loss", Fixed(m.train_loss()), "train_loss"));
  }
  if (m.has_test()) {
    absl::StrAppend(&h, Card("test accuracy", Fixed(m.test_accuracy()), "test_accuracy"),
                    Card("test top-5", Fixed(m.test_top5_accuracy()), "test_top5_accuracy"),
                    Card("test loss", Fixed(m.test_loss()), "test_loss"));
  }
  absl::StrAppend(&h, Card("epochs", absl::StrCat(m.epochs_completed(), " / ", job.spec().epochs()), "epochs",
                           m.epochs_completed() > 0 ? absl::StrCat("exported: epoch ", m.best_epoch()) : ""),
                  Card("trained images", absl::StrCat(m.trained_images()), "trained_images",
                       m.skipped_images() > 0 ? absl::StrCat(m.skipped_images(), " skipped as undecodable") : ""),
                  "</div>\n");

  // Training curves and the per-epoch table.
  absl::StrAppend(&h, "<h2 id=\"training\">Training</h2>\n");
  if (history.epochs.empty()) {
    absl::StrAppend(&h, "<p class=\"note\">No epoch finished: there are no curves.</p>\n");
  } else {
    absl::StrAppend(&h, "<div class=\"charts\">");
    for (const Chart& c : curves) absl::StrAppend(&h, ChartHtml(c));
    if (history.exact) {
      const int32_t per_point = std::max_element(history.epochs.begin(), history.epochs.end(), [](const auto& a,
                                                                                               const auto& b) {
                                  return a.second.steps_per_point() < b.second.steps_per_point();
                                })->second.steps_per_point();
      absl::StrAppend(&h, "</div>\n<p class=\"note\" id=\"step-note\">",
                      per_point > 1 ? absl::StrCat("Each point of the per-step curves is the mean loss of ", per_point,
                                                   " consecutive steps (epochs of more than 1000 steps are summed "
                                                   "so), and the learning rate at the last of them. ")
                                    : "The per-step curves show every training step's loss and learning rate. ",
                      "Dotted lines mark the epochs' ends.</p>\n");
    } else {
      absl::StrAppend(&h, "</div>\n<p class=\"note\" id=\"step-note\">This job's worker recorded no per-step "
                          "curve, so it is drawn from the job's progress events (every few seconds and at each "
                          "epoch's end); each point is the mean loss of the epoch so far. Dotted lines mark the "
                          "epochs' ends.</p>\n");
    }
    absl::StrAppend(&h, "<h3>Epochs</h3>\n<table id=\"epochs\"><tr><th>epoch</th><th>train loss</th><th>train "
                        "acc</th><th>val loss</th><th>val acc</th><th>val top-5</th><th>learning rate</th>"
                        "<th>images/s</th><th>seconds</th><th>loader wait</th><th>freeze depth</th><th></th></tr>\n");
    for (const auto& [epoch, s] : history.epochs) {
      absl::StrAppend(&h, "<tr data-epoch=\"", epoch, "\"><td class=\"num\">", epoch, "</td><td class=\"num\">",
                      Fixed(s.train_loss()), "</td><td class=\"num\">", Fixed(s.train_accuracy()),
                      "</td><td class=\"num\">", Fixed(s.val_loss()),
                      "</td><td class=\"num\" data-field=\"val_accuracy\">",
                      Fixed(s.val_accuracy()), "</td><td class=\"num\">", Fixed(s.val_top5_accuracy()),
                      "</td><td class=\"num\">", absl::StrFormat("%.3g", s.learning_rate()), "</td><td class=\"num\">",
                      absl::StrFormat("%.1f", s.images_per_second()), "</td><td class=\"num\">",
                      absl::StrFormat("%.1f", s.epoch_seconds()), "</td><td class=\"num\">",
                      absl::StrFormat("%.1f", s.loader_wait_seconds()), "</td><td class=\"num\">",
                      s.freeze_depth() < 0 ? "all" : absl::StrCat(s.freeze_depth()), "</td><td>",
                      s.best() ? "best so far" : "", s.features_cached() ? " (cached features)" : "",
                      "</td></tr>\n");
    }
    absl::StrAppend(&h, "</table>\n");
  }

  // Evaluation.
  absl::StrAppend(&h, "<h2 id=\"evaluation\">Evaluation</h2>\n");
  std::string split_key;
  if (!split) {
    absl::StrAppend(&h, "<p class=\"note\" id=\"no-evaluation\">No per-class evaluation: the job recorded none "
                        "(it ended before its final evaluation, or ran before finetuned recorded one).</p>\n");
  } else {
    split_key = split->key;
    const size_t n = static_cast<size_t>(split->per_class->size());
    if (split->key == "test") {
      absl::StrAppend(&h, "<p class=\"note\" data-split=\"test\">On the dataset's test split, with the exported "
                          "weights: images that neither trained the model nor chose its epoch.</p>\n");
    } else {
      absl::StrAppend(&h, "<p class=\"note\" data-split=\"val\">This dataset has no test split, so these figures "
                          "come from the validation split, with the exported weights. That split chose the "
                          "exported epoch, so they flatter the model.</p>\n");
    }
    absl::StrAppend(&h, "<div class=\"charts\">");
    for (const Chart& c : evaluation) absl::StrAppend(&h, ChartHtml(c));
    absl::StrAppend(&h, "</div>\n");

    if (n > kMaxChartClasses) {
      absl::StrAppend(&h, "<p class=\"note\">", n, " classes: too many to chart (at most ", kMaxChartClasses,
                      ").</p>\n");
    }
    // The confusion matrix as numbers too.
    if (static_cast<size_t>(split->confusion->size()) == n * n && n <= kMaxConfusionTableClasses) {
      absl::StrAppend(&h, "<h3>Confusion matrix</h3>\n<table class=\"confusion\" id=\"confusion\"><tr><th>true \\ "
                          "predicted</th>");
      for (size_t j = 0; j < n; ++j) absl::StrAppend(&h, "<th>", Html(class_name(static_cast<int64_t>(j))), "</th>");
      absl::StrAppend(&h, "</tr>\n");
      for (size_t i = 0; i < n; ++i) {
        absl::StrAppend(&h, "<tr><th>", Html(class_name(static_cast<int64_t>(i))), "</th>");
        for (size_t j = 0; j < n; ++j) {
          absl::StrAppend(&h, "<td", i == j ? " class=\"diag\"" : "", " data-true=\"", i, "\" data-pred=\"", j, "\">",
                          split->confusion->Get(static_cast<int>(i * n + j)), "</td>");
        }
        absl::StrAppend(&h, "</tr>\n");
      }
      absl::StrAppend(&h, "</table>\n");
    }

    absl::StrAppend(&h, "<h3>Per class</h3>\n<table id=\"per-class\"><tr><th>class</th><th>precision</th>"
                        "<th>recall</th><th>F1</th><th>support</th></tr>\n");
    for (const auto& c : *split->per_class) {
      absl::StrAppend(&h, "<tr><td class=\"class\">", Html(c.name()), "</td><td class=\"num\">", Fixed(c.precision()),
                      "</td><td class=\"num\">", Fixed(c.recall()), "</td><td class=\"num\">", Fixed(c.f1()),
                      "</td><td class=\"num\">", c.support(), "</td></tr>\n");
    }
    absl::StrAppend(&h, "</table>\n");

    // The most confused pairs: the largest off-diagonal cells.
    struct Pair {
      size_t truth, predicted;
      int64_t count;
      double share;
    };
    std::vector<Pair> pairs;
    if (static_cast<size_t>(split->confusion->size()) == n * n) {
      for (size_t i = 0; i < n; ++i) {
        int64_t row = 0;
        for (size_t j = 0; j < n; ++j) row += split->confusion->Get(static_cast<int>(i * n + j));
        for (size_t j = 0; j < n; ++j) {
          const int64_t v = split->confusion->Get(static_cast<int>(i * n + j));
          if (i != j && v > 0) pairs.push_back({i, j, v, row > 0 ? static_cast<double>(v) / row : 0});
        }
      }
    }
    std::stable_sort(pairs.begin(), pairs.end(), [](const Pair& a, const Pair& b) {
      return a.count != b.count ? a.count > b.count : a.share > b.share;
    });
    if (pairs.size() > kTopConfusedPairs) pairs.resize(kTopConfusedPairs);
    absl::StrAppend(&h, "<h3>Most confused pairs</h3>\n");
    if (pairs.empty()) {
      absl::StrAppend(&h, "<p class=\"note\" id=\"confused-pairs\">No image was misclassified.</p>\n");
    } else {
      absl::StrAppend(&h, "<table id=\"confused-pairs\"><tr><th>true class</th><th>predicted as</th><th>images</th>"
                          "<th>share of the true class</th></tr>\n");
      for (const Pair& p : pairs) {
        absl::StrAppend(&h, "<tr><td>", Html(class_name(static_cast<int64_t>(p.truth))), "</td><td>",
                        Html(class_name(static_cast<int64_t>(p.predicted))), "</td><td class=\"num\">", p.count,
                        "</td><td class=\"num\">", absl::StrFormat("%.1f%%", 100 * p.share), "</td></tr>\n");
      }
      absl::StrAppend(&h, "</table>\n");
    }

    // The gallery.
    absl::StrAppend(&h, "<h3>Misclassified images</h3>\n");
    if (split->misclassified->empty()) {
      absl::StrAppend(&h, "<p class=\"note\" id=\"gallery\">", pairs.empty() ? "None." : "None recorded.", "</p>\n");
    } else {
      absl::StrAppend(&h, "<p class=\"note\">", split->misclassified->size(),
                      " of the ", split->title, "'s mistakes, spread over the true classes, the most confident "
                      "first; as the model saw them (before cropping).</p>\n<div class=\"gallery\" id=\"gallery\">");
      for (const pb::Misclassified& e : *split->misclassified) {
        const std::string img =
            e.thumbnail_jpeg().empty()
                ? "<p class=\"note\">(no thumbnail)</p>"
                : absl::StrCat("<img src=\"", DataUri("image/jpeg", e.thumbnail_jpeg()), "\" alt=\"", Html(e.path()),
                               "\">");
        absl::StrAppend(&h, "<figure class=\"mis\">", img, "<figcaption><span class=\"true\">true: ",
                        Html(class_name(e.true_class())), "</span><span class=\"pred\">predicted: ",
                        Html(class_name(e.predicted_class())), absl::StrFormat(" (%.2f)", e.confidence()),
                        "</span><span class=\"path\">", Html(e.path()), "</span></figcaption></figure>\n");
      }
      absl::StrAppend(&h, "</div>\n");
    }
  }

  // Spec and timings.
  // Every field, in the proto's order, in two columns.
  absl::StrAppend(&h, "<h2 id=\"spec\">Spec</h2>\n<div class=\"spec\" id=\"spec-table\"><table>\n");
  const auto* desc = pb::JobSpec::descriptor();
  for (int i = 0; i < desc->field_count(); ++i) {
    if (i == (desc->field_count() + 1) / 2) absl::StrAppend(&h, "</table><table>\n");
    const auto* f = desc->field(i);
    const std::string value = FieldText(job.spec(), f);
    absl::StrAppend(&h, "<tr><th>", f->name(), "</th><td data-field=\"", f->name(), "\">",
                    value.empty() ? "&ndash;" : Html(value), "</td></tr>\n");
  }
  absl::StrAppend(&h, "</table></div>\n");

  absl::StrAppend(&h, "<h2 id=\"timings\">Timings</h2>\n<table id=\"timings-table\">\n");
  auto row = [&](absl::string_view name, const std::string& value) {
    absl::StrAppend(&h, "<tr><th>", Html(name), "</th><td>", Html(value), "</td></tr>\n");
  };
  row("submitted", TimeText(job.create_time()));
  row("started", TimeText(job.start_time()));
  row("finished", TimeText(job.end_time()));
  if (HasTime(job.create_time()) && HasTime(job.start_time())) {
    row("waited in the queue", Seconds(Between(job.create_time(), job.start_time())));
  }
  double epoch_seconds = 0, images = 0;
  for (const auto& [epoch, s] : history.epochs) {
    epoch_seconds += s.epoch_seconds();
    images += s.images_per_second() * s.epoch_seconds();
  }
  if (HasTime(job.start_time()) && HasTime(job.end_time())) {
    const double ran = Between(job.start_time(), job.end_time());
    row("ran (start to finish)", Seconds(ran));
    if (!history.epochs.empty() && ran >= epoch_seconds) {
      row("of which epochs (training and validation)", Seconds(epoch_seconds));
      row("loading, testing and export", Seconds(ran - epoch_seconds));
    }
  }
  if (epoch_seconds > 0) row("training throughput", absl::StrFormat("%.1f images/s", images / epoch_seconds));
  row("attempts", absl::StrCat(job.attempts()));
  if (job.workers_size() > 1) {
    row("workers (data parallel, by rank)", absl::StrJoin(job.workers(), ", "));
  } else if (!job.worker_id().empty()) {
    row("worker", job.worker_id());
  }
  absl::StrAppend(&h, "</table>\n");
  absl::StrAppend(&h, "<footer>Made by ftctl report from job ", Html(job.id()), "'s record and its ",
                  history.events, " events",
                  history.warnings > 0 ? absl::StrCat(" (", history.warnings, " warnings)") : "",
                  ".</footer>\n</main></body></html>\n");

  // The files.
  ReportFiles files;
  files.split = split_key;
  for (const std::vector<Chart>* group : {&curves, &evaluation}) {
    for (const Chart& c : *group) {
      if (c.png.empty()) continue;
      const std::string path = absl::StrCat(dir, "/", c.file);
      FT_RETURN_IF_ERROR(util::WriteFileAtomic(path, c.png));
      files.charts.push_back(path);
    }
  }
  files.html = absl::StrCat(dir, "/report.html");
  FT_RETURN_IF_ERROR(util::WriteFileAtomic(files.html, h));
  return files;
}

int Report(Invocation& inv) {
  const std::string& job_id = inv.args()[0];
  std::string dir = inv.Flag("out");
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  // The folder first, so that a typo costs no call.
  if (absl::Status made = util::MakeDirs(dir); !made.ok()) {
    return inv.Refuse(absl::StrCat("--out: ", made.message()));
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    return inv.Refuse(absl::StrCat("--out: cannot write to ", dir, ": ", std::strerror(errno)));
  }
  auto job = inv.client().Get(job_id);
  if (!job.ok()) return inv.Fail(job.status());
  if (job->state() != pb::SUCCEEDED && job->state() != pb::FAILED && job->state() != pb::CANCELLED) {
    return inv.Refuse(absl::StrCat("job ", job_id, " is ", pb::JobState_Name(job->state()),
                                   ": a report is made of a finished job (follow it with ftctl watch ", job_id, ")"));
  }
  ReportData data;
  // A finished job's stream replays its log and ends; the job it returns is
  // the same finished one.
  auto final_job = inv.client().Watch(job_id, 1, [&](const pb::JobEvent& e) { data.events.push_back(e); });
  if (!final_job.ok()) return inv.Fail(final_job.status());
  data.job = *final_job;
  if (!data.job.model_id().empty()) {
    // The model's classes name the labels even where the metrics do not.
    if (auto model = inv.client().GetModel(data.job.model_id()); model.ok()) {
      data.classes.assign(model->classes().begin(), model->classes().end());
    }
  }
  auto files = WriteReport(data, dir);
  if (!files.ok()) return inv.Refuse(files.status().message());
  if (inv.json()) {
    google::protobuf::Struct out;
    auto& fields = *out.mutable_fields();
    fields["job_id"].set_string_value(data.job.id());
    fields["state"].set_string_value(pb::JobState_Name(data.job.state()));
    fields["report"].set_string_value(files->html);
    auto* charts = fields["charts"].mutable_list_value();
    for (const auto& c : files->charts) charts->add_values()->set_string_value(c);
    fields["split"].set_string_value(files->split);
    std::cout << util::ToJson(out) << std::endl;
  } else {
    std::cout << files->html << "\n";
    for (const auto& c : files->charts) std::cout << c << "\n";
    std::cout.flush();
  }
  return kExitOk;
}

}  // namespace ft::client::ftctl
