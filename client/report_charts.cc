#include "client/report_charts.h"

#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ft::client::report {
namespace {

constexpr char kFont[] = "DejaVu Sans";
constexpr double kTitleSize = 15;
constexpr double kLabelSize = 12;
constexpr double kTickSize = 11;
constexpr double kPi = 3.14159265358979323846;
// Class names longer than this are cut, with an ellipsis, on the axes.
constexpr size_t kMaxAxisLabelChars = 18;

constexpr Rgb kAxisColour = 0x444444;
constexpr Rgb kGridColour = 0xe3e3e3;
constexpr Rgb kTextColour = 0x222222;

// matplotlib's "Blues", light to dark.
constexpr Rgb kBlues[] = {0xf7fbff, 0xdeebf7, 0xc6dbef, 0x9ecae1, 0x6baed6,
                          0x4292c6, 0x2171b5, 0x08519c, 0x08306b};

// An opaque white image surface and its context, freed together.
class Canvas {
 public:
  Canvas(int width, int height, int scale)
      : surface_(cairo_image_surface_create(CAIRO_FORMAT_RGB24, width * scale, height * scale)),
        cr_(cairo_create(surface_)) {
    cairo_scale(cr_, scale, scale);
    cairo_set_source_rgb(cr_, 1, 1, 1);
    cairo_paint(cr_);
    cairo_select_font_face(cr_, kFont, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  }
  ~Canvas() {
    cairo_destroy(cr_);
    cairo_surface_destroy(surface_);
  }
  Canvas(const Canvas&) = delete;
  Canvas& operator=(const Canvas&) = delete;

  cairo_t* cr() { return cr_; }

  void Colour(Rgb c, double alpha = 1) {
    cairo_set_source_rgba(cr_, ((c >> 16) & 0xff) / 255.0, ((c >> 8) & 0xff) / 255.0, (c & 0xff) / 255.0, alpha);
  }
  void Font(double size, bool bold = false) {
    cairo_select_font_face(cr_, kFont, CAIRO_FONT_SLANT_NORMAL,
                           bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr_, size);
  }
  double TextWidth(const std::string& text) {
    cairo_text_extents_t e;
    cairo_text_extents(cr_, text.c_str(), &e);
    return e.x_advance;
  }
  // Draws `text` with its anchor at (x, y): `h` 0 left, 0.5 centre, 1 right
  // of the text; `v` 0 its capitals' top, 0.5 their middle, 1 the baseline.
  // `angle` in radians, clockwise, about the anchor.
  void Text(const std::string& text, double x, double y, double h, double v, double angle = 0) {
    cairo_font_extents_t fe;
    cairo_font_extents(cr_, &fe);
    const double w = TextWidth(text);
    // The height of capitals and digits: about 0.76 of DejaVu's ascent.
    const double cap = fe.ascent * 0.76;
    cairo_save(cr_);
    cairo_translate(cr_, x, y);
    cairo_rotate(cr_, angle);
    cairo_move_to(cr_, -w * h, cap * (1 - v));
    cairo_show_text(cr_, text.c_str());
    cairo_restore(cr_);
  }
  void Line(double x0, double y0, double x1, double y1, double width) {
    cairo_set_line_width(cr_, width);
    cairo_move_to(cr_, x0, y0);
    cairo_line_to(cr_, x1, y1);
    cairo_stroke(cr_);
  }
  void Rect(double x, double y, double w, double h) {
    cairo_rectangle(cr_, x, y, w, h);
    cairo_fill(cr_);
  }

  absl::StatusOr<std::string> Png() {
    cairo_surface_flush(surface_);
    if (cairo_status(cr_) != CAIRO_STATUS_SUCCESS) {
      return absl::InternalError(absl::StrCat("cairo: ", cairo_status_to_string(cairo_status(cr_))));
    }
    std::string png;
    const cairo_status_t status = cairo_surface_write_to_png_stream(
        surface_,
        [](void* closure, const unsigned char* data, unsigned int length) {
          static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
          return CAIRO_STATUS_SUCCESS;
        },
        &png);
    if (status != CAIRO_STATUS_SUCCESS) {
      return absl::InternalError(absl::StrCat("cairo could not encode a PNG: ", cairo_status_to_string(status)));
    }
    return png;
  }

 private:
  cairo_surface_t* surface_;
  cairo_t* cr_;
};

std::string AxisLabel(const std::string& name) {
  if (name.size() <= kMaxAxisLabelChars) return name;
  // Cut at a UTF-8 character boundary.
  size_t cut = kMaxAxisLabelChars - 1;
  while (cut > 0 && (static_cast<unsigned char>(name[cut]) & 0xc0) == 0x80) --cut;
  return name.substr(0, cut) + "\u2026";
}

Rgb Mix(Rgb a, Rgb b, double t) {
  auto ch = [&](int shift) {
    const double va = (a >> shift) & 0xff, vb = (b >> shift) & 0xff;
    return static_cast<Rgb>(std::lround(va + (vb - va) * t)) << shift;
  };
  return ch(16) | ch(8) | ch(0);
}

// `t` in [0, 1] on the Blues scale.
Rgb Blues(double t) {
  t = std::clamp(t, 0.0, 1.0);
  constexpr size_t n = sizeof(kBlues) / sizeof(kBlues[0]);
  const double pos = t * (n - 1);
  const size_t i = std::min(n - 2, static_cast<size_t>(pos));
  return Mix(kBlues[i], kBlues[i + 1], pos - i);
}

// A legend row, right-aligned so that it ends at `right`, at height `y`.
void Legend(Canvas& c, const std::vector<Series>& series, double right, double y, bool bars) {
  c.Font(kTickSize);
  double width = 0;
  for (const Series& s : series) width += 22 + c.TextWidth(s.label) + 14;
  double x = right - width + 14;
  for (const Series& s : series) {
    c.Colour(s.colour);
    if (bars) {
      c.Rect(x, y - 5, 14, 10);
    } else {
      cairo_set_dash(c.cr(), nullptr, 0, 0);
      if (s.dashed) {
        const double dash[] = {5, 3};
        cairo_set_dash(c.cr(), dash, 2, 0);
      }
      c.Line(x, y, x + 16, y, 2.2);
      cairo_set_dash(c.cr(), nullptr, 0, 0);
    }
    c.Colour(kTextColour);
    c.Text(s.label, x + 22, y, 0, 0.5);
    x += 22 + c.TextWidth(s.label) + 14;
  }
}

// How a column's label is turned: level when it fits its column, slanted
// (45 degrees) when columns are wide enough for slanted text not to touch,
// else upright (90 degrees).
double ColumnLabelAngle(double label_width, double column) {
  if (label_width <= column - 4) return 0;
  return column >= 24 ? kPi / 4 : kPi / 2;
}

// A column label hanging from (x, y), the centre of its column's foot.
void ColumnLabel(Canvas& c, const std::string& label, double x, double y, double angle) {
  if (angle == 0) {
    c.Text(label, x, y, 0.5, 0);
  } else if (angle < kPi / 2 - 1e-9) {
    c.Text(label, x - 3, y, 0, 0, angle);
  } else {
    c.Text(label, x, y, 0, 0.5, angle);
  }
}

bool AllFinite(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [](double d) { return std::isfinite(d); });
}

// Axis ticks and their labels, with the plot's data range.
struct Axis {
  double lo = 0;
  double hi = 1;
  std::vector<double> ticks;
  std::vector<std::string> labels;
};

Axis MakeAxis(double lo, double hi, int target, bool integer, std::optional<double> fixed_lo,
              std::optional<double> fixed_hi) {
  if (fixed_lo) lo = *fixed_lo;
  if (fixed_hi) hi = *fixed_hi;
  if (!(hi - lo > 1e-12 * std::max(1.0, std::abs(hi)))) {
    // One value: a range around it.
    const double pad = lo == 0 ? 1 : std::abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  Axis a;
  a.ticks = NiceTicks(lo, hi, target);
  if (integer) {
    std::vector<double> whole;
    for (double t : a.ticks) {
      if (std::abs(t - std::round(t)) < 1e-9) whole.push_back(std::round(t));
    }
    if (whole.size() < 2) {
      whole.clear();
      for (double t = std::floor(lo); t <= std::ceil(hi) + 1e-9; t += 1) whole.push_back(t);
    }
    a.ticks = whole;
  }
  a.lo = fixed_lo ? lo : std::min(lo, a.ticks.front());
  a.hi = fixed_hi ? hi : std::max(hi, a.ticks.back());
  if (integer) {
    // Epochs: half an epoch of room at each end, ticks inside.
    a.lo = lo - 0.3;
    a.hi = hi + 0.3;
    std::vector<double> inside;
    for (double t : a.ticks) {
      if (t >= a.lo && t <= a.hi) inside.push_back(t);
    }
    a.ticks = inside;
  } else if (fixed_lo || fixed_hi) {
    std::vector<double> inside;
    for (double t : a.ticks) {
      if (t >= a.lo - 1e-9 && t <= a.hi + 1e-9) inside.push_back(t);
    }
    a.ticks = inside;
  }
  a.labels = TickLabels(a.ticks);
  return a;
}

}  // namespace

Rgb PaletteColour(size_t i) {
  static constexpr Rgb kTab10[] = {0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd,
                                   0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22, 0x17becf};
  return kTab10[i % 10];
}

std::vector<double> NiceTicks(double lo, double hi, int target) {
  if (!(hi > lo)) return {lo};
  auto nice = [](double x, bool round) {
    const double e = std::floor(std::log10(x));
    const double f = x / std::pow(10, e);
    double nf;
    if (round) {
      nf = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
    } else {
      nf = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
    }
    return nf * std::pow(10, e);
  };
  const double step = nice(nice(hi - lo, false) / std::max(1, target - 1), true);
  const double first = std::floor(lo / step + 1e-9) * step;
  const double last = std::ceil(hi / step - 1e-9) * step;
  std::vector<double> ticks;
  for (int i = 0; first + i * step <= last + step * 1e-6 && i < 1000; ++i) {
    double t = first + i * step;
    if (std::abs(t) < step * 1e-9) t = 0;  // no "-0"
    ticks.push_back(t);
  }
  return ticks;
}

std::vector<std::string> TickLabels(const std::vector<double>& ticks) {
  double step = INFINITY;
  for (size_t i = 1; i < ticks.size(); ++i) step = std::min(step, std::abs(ticks[i] - ticks[i - 1]));
  std::vector<std::string> labels;
  if (!(step > 0) || !std::isfinite(step)) {
    for (double t : ticks) labels.push_back(absl::StrFormat("%g", t));
    return labels;
  }
  // As many decimals as the step has (0.05: 2), so that no label reads
  // "5e+02" and neighbours differ.
  const int decimals = std::clamp(static_cast<int>(std::ceil(-std::log10(step) - 1e-9)), 0, 12);
  for (double t : ticks) labels.push_back(absl::StrFormat("%.*f", decimals, t));
  return labels;
}

// The y axis's grid lines, tick marks and labels, from `left` to `right`.
template <typename ToPixel>
void YGrid(Canvas& c, const Axis& ya, const ToPixel& py, double left, double right) {
  for (size_t i = 0; i < ya.ticks.size(); ++i) {
    const double y = py(ya.ticks[i]);
    c.Colour(kGridColour);
    c.Line(left, y, right, y, 1);
    c.Colour(kAxisColour);
    c.Line(left - 4, y, left, y, 1);
    c.Colour(kTextColour);
    c.Text(ya.labels[i], left - 7, y, 1, 0.5);
  }
}

absl::StatusOr<std::string> RenderLineChart(const LineChart& chart, int scale) {
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (const Series& s : chart.series) {
    if (s.x.size() != s.y.size()) {
      return absl::InvalidArgumentError(absl::StrCat("series '", s.label, "' has ", s.x.size(), " x and ",
                                                     s.y.size(), " y values"));
    }
    if (!AllFinite(s.x) || !AllFinite(s.y)) {
      return absl::InvalidArgumentError(absl::StrCat("series '", s.label, "' has a value that is not finite"));
    }
    for (size_t i = 0; i < s.x.size(); ++i) {
      xmin = std::min(xmin, s.x[i]);
      xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]);
      ymax = std::max(ymax, s.y[i]);
    }
  }
  if (!std::isfinite(xmin)) return absl::InvalidArgumentError(absl::StrCat("chart '", chart.title, "' has no points"));
  const Axis xa = MakeAxis(xmin, xmax, 7, chart.integer_x, std::nullopt, std::nullopt);
  const Axis ya = MakeAxis(ymin, ymax, 6, false, chart.y_min, chart.y_max);

  Canvas c(chart.width, chart.height, scale);
  c.Font(kTickSize);
  double tick_width = 0;
  for (const std::string& l : ya.labels) tick_width = std::max(tick_width, c.TextWidth(l));
  const double left = 14 + kLabelSize + 10 + tick_width + 8;
  const double right = chart.width - 18.0;
  const double top = 62;
  const double bottom = chart.height - 46.0;
  auto px = [&](double x) { return left + (x - xa.lo) / (xa.hi - xa.lo) * (right - left); };
  auto py = [&](double y) { return bottom - (y - ya.lo) / (ya.hi - ya.lo) * (bottom - top); };

  // Title, legend, grid, ticks.
  c.Colour(kTextColour);
  c.Font(kTitleSize, /*bold=*/true);
  c.Text(chart.title, chart.width / 2.0, 12, 0.5, 0);
  Legend(c, chart.series, right, 44, /*bars=*/false);
  c.Font(kTickSize);
  YGrid(c, ya, py, left, right);
  for (size_t i = 0; i < xa.ticks.size(); ++i) {
    const double x = px(xa.ticks[i]);
    c.Colour(kGridColour);
    c.Line(x, top, x, bottom, 1);
    c.Colour(kAxisColour);
    c.Line(x, bottom, x, bottom + 4, 1);
    c.Colour(kTextColour);
    c.Text(xa.labels[i], x, bottom + 8, 0.5, 0);
  }
  c.Colour(kAxisColour, 0.8);
  const double dots[] = {2, 3};
  cairo_set_dash(c.cr(), dots, 2, 0);
  for (double m : chart.x_marks) {
    if (m > xa.lo && m < xa.hi) c.Line(px(m), top, px(m), bottom, 1);
  }
  cairo_set_dash(c.cr(), nullptr, 0, 0);
  c.Colour(kAxisColour);
  c.Line(left, top, left, bottom, 1.2);
  c.Line(left, bottom, right, bottom, 1.2);
  c.Font(kLabelSize);
  c.Colour(kTextColour);
  c.Text(chart.x_label, (left + right) / 2, chart.height - 10.0, 0.5, 1);
  c.Text(chart.y_label, 14, (top + bottom) / 2, 0.5, 0, -kPi / 2);

  // The series, clipped to the plot (with room for a marker on its edges).
  cairo_save(c.cr());
  cairo_rectangle(c.cr(), left - 6, top - 6, right - left + 12, bottom - top + 12);
  cairo_clip(c.cr());
  for (const Series& s : chart.series) {
    std::vector<std::pair<double, double>> points;
    for (size_t i = 0; i < s.x.size(); ++i) points.emplace_back(s.x[i], s.y[i]);
    std::sort(points.begin(), points.end());
    c.Colour(s.colour);
    if (s.dashed) {
      const double dash[] = {6, 4};
      cairo_set_dash(c.cr(), dash, 2, 0);
    }
    cairo_set_line_width(c.cr(), 2.2);
    cairo_set_line_join(c.cr(), CAIRO_LINE_JOIN_ROUND);
    for (size_t i = 0; i < points.size(); ++i) {
      if (i == 0) {
        cairo_move_to(c.cr(), px(points[i].first), py(points[i].second));
      } else {
        cairo_line_to(c.cr(), px(points[i].first), py(points[i].second));
      }
    }
    cairo_stroke(c.cr());
    cairo_set_dash(c.cr(), nullptr, 0, 0);
    // Markers where the points are few enough to tell apart.
    if (points.size() <= 60) {
      for (const auto& [x, y] : points) {
        cairo_arc(c.cr(), px(x), py(y), 3.5, 0, 2 * kPi);
        cairo_fill(c.cr());
      }
    }
  }
  cairo_restore(c.cr());
  return c.Png();
}

absl::StatusOr<std::string> RenderHeatMap(const HeatMap& map, int scale) {
  const size_t n = map.labels.size();
  if (n == 0) return absl::InvalidArgumentError("a heat map needs at least one class");
  if (map.cells.size() != n * n) {
    return absl::InvalidArgumentError(
        absl::StrCat("a heat map of ", n, " classes needs ", n * n, " cells, got ", map.cells.size()));
  }
  std::vector<int64_t> row_sums(n, 0);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) row_sums[i] += map.cells[i * n + j];
  }
  const double cell = std::clamp(420.0 / n, 10.0, 56.0);
  const bool numbers = cell >= 18;
  std::vector<std::string> labels;
  for (const std::string& l : map.labels) labels.push_back(AxisLabel(l));

  // Measure first, on a scratch surface, to size the margins.
  const double label_size = std::min(kTickSize, std::max(7.0, cell * 0.8));
  double label_width = 0;
  {
    Canvas scratch(1, 1, 1);
    scratch.Font(label_size);
    for (const std::string& l : labels) label_width = std::max(label_width, scratch.TextWidth(l));
  }
  const double angle = ColumnLabelAngle(label_width, cell);
  const double left = 14 + kLabelSize + 10 + label_width + 8;
  const double top = 44;
  const double grid = cell * n;
  const double below = label_width * std::sin(angle) + label_size + 14;
  const double bar_left = left + grid + std::max(24.0, label_width * std::cos(angle) - 10);
  const int width = static_cast<int>(std::ceil(bar_left + 16 + 8 + 40 + 16));
  const int height = static_cast<int>(std::ceil(top + grid + below + kLabelSize + 18));

  Canvas c(std::max(width, 360), height, scale);
  c.Colour(kTextColour);
  c.Font(kTitleSize, /*bold=*/true);
  c.Text(map.title, std::max(width, 360) / 2.0, 12, 0.5, 0);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      const int64_t v = map.cells[i * n + j];
      const double share = row_sums[i] > 0 ? static_cast<double>(v) / row_sums[i] : 0;
      c.Colour(Blues(share));
      c.Rect(left + j * cell, top + i * cell, cell, cell);
      if (numbers) {
        c.Font(std::min(13.0, cell * 0.36));
        c.Colour(share > 0.5 ? 0xffffff : kTextColour);
        c.Text(absl::StrCat(v), left + (j + 0.5) * cell, top + (i + 0.5) * cell, 0.5, 0.5);
      }
    }
  }
  // Cell borders and the frame.
  c.Colour(0xffffff);
  for (size_t k = 1; k < n; ++k) {
    c.Line(left + k * cell, top, left + k * cell, top + grid, cell >= 18 ? 1 : 0.5);
    c.Line(left, top + k * cell, left + grid, top + k * cell, cell >= 18 ? 1 : 0.5);
  }
  c.Colour(kAxisColour);
  cairo_set_line_width(c.cr(), 1.2);
  cairo_rectangle(c.cr(), left, top, grid, grid);
  cairo_stroke(c.cr());
  // Class names: rows at the left, columns below (slanted or upright when wide).
  c.Font(label_size);
  c.Colour(kTextColour);
  for (size_t i = 0; i < n; ++i) {
    c.Text(labels[i], left - 6, top + (i + 0.5) * cell, 1, 0.5);
    ColumnLabel(c, labels[i], left + (i + 0.5) * cell, top + grid + 6, angle);
  }
  c.Font(kLabelSize);
  c.Text(map.column_label, left + grid / 2, top + grid + below + kLabelSize, 0.5, 1);
  c.Text(map.row_label, 14, top + grid / 2, 0.5, 0, -kPi / 2);

  // The colour scale: share of the true class, 0 to 100%.
  const double bar_top = top, bar_height = std::max(grid, 120.0);
  for (int k = 0; k < 100; ++k) {
    c.Colour(Blues(1 - k / 99.0));
    c.Rect(bar_left, bar_top + bar_height * k / 100, 16, bar_height / 100 + 0.6);
  }
  c.Colour(kAxisColour);
  cairo_set_line_width(c.cr(), 1);
  cairo_rectangle(c.cr(), bar_left, bar_top, 16, bar_height);
  cairo_stroke(c.cr());
  c.Font(kTickSize);
  for (int pct : {0, 25, 50, 75, 100}) {
    const double y = bar_top + bar_height * (1 - pct / 100.0);
    c.Colour(kAxisColour);
    c.Line(bar_left + 16, y, bar_left + 20, y, 1);
    c.Colour(kTextColour);
    c.Text(absl::StrCat(pct, "%"), bar_left + 23, y, 0, 0.5);
  }
  c.Font(kTickSize - 1);
  c.Text("of its row", bar_left - 2, bar_top + bar_height + 8, 0, 0);
  return c.Png();
}

absl::StatusOr<std::string> RenderBarChart(const BarChart& chart, int scale) {
  const size_t n = chart.categories.size();
  if (n == 0 || chart.groups.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("bar chart '", chart.title, "' has no bars"));
  }
  for (const Series& g : chart.groups) {
    if (g.y.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat("bar group '", g.label, "' has ", g.y.size(), " values for ",
                                                     n, " categories"));
    }
    if (!AllFinite(g.y)) return absl::InvalidArgumentError(absl::StrCat("bar group '", g.label, "' is not finite"));
  }
  std::vector<std::string> labels;
  for (const std::string& l : chart.categories) labels.push_back(AxisLabel(l));
  const Axis ya = MakeAxis(chart.y_min, chart.y_max, 6, false, chart.y_min, chart.y_max);
  double label_width = 0, tick_width = 0;
  {
    Canvas scratch(1, 1, 1);
    scratch.Font(kTickSize);
    for (const std::string& l : labels) label_width = std::max(label_width, scratch.TextWidth(l));
    for (const std::string& l : ya.labels) tick_width = std::max(tick_width, scratch.TextWidth(l));
  }
  const double left = 14 + kLabelSize + 10 + tick_width + 8;
  // The bars fill a 600 px chart, and widen it past 16 px a class.
  constexpr double kMinSlot = 16;
  const double slot = std::max(kMinSlot, (600.0 - left - 18) / n);
  const double angle = ColumnLabelAngle(label_width, slot);
  const double plot_width = slot * n;
  const int width = static_cast<int>(std::ceil(left + plot_width + 18 + label_width * std::cos(angle) *
                                                                           (angle > 0 ? 1 : 0)));
  const double right = left + plot_width;
  const double top = 62;
  const double plot_height = 240;
  const double bottom = top + plot_height;
  const int height = static_cast<int>(std::ceil(bottom + label_width * std::sin(angle) + kTickSize + 20));
  auto py = [&](double y) { return bottom - (std::clamp(y, ya.lo, ya.hi) - ya.lo) / (ya.hi - ya.lo) * plot_height; };

  Canvas c(width, height, scale);
  c.Colour(kTextColour);
  c.Font(kTitleSize, /*bold=*/true);
  c.Text(chart.title, width / 2.0, 12, 0.5, 0);
  Legend(c, chart.groups, width - 18.0, 44, /*bars=*/true);
  c.Font(kTickSize);
  YGrid(c, ya, py, left, right);
  const double group_width = slot * 0.8;
  const double bar = group_width / chart.groups.size();
  for (size_t k = 0; k < n; ++k) {
    const double x0 = left + k * slot + (slot - group_width) / 2;
    for (size_t g = 0; g < chart.groups.size(); ++g) {
      const double v = chart.groups[g].y[k];
      c.Colour(chart.groups[g].colour);
      c.Rect(x0 + g * bar, py(v), std::max(1.0, bar - 1), bottom - py(v));
    }
    c.Colour(kTextColour);
    c.Font(kTickSize);
    ColumnLabel(c, labels[k], left + (k + 0.5) * slot, bottom + 6, angle);
  }
  c.Colour(kAxisColour);
  c.Line(left, top, left, bottom, 1.2);
  c.Line(left, bottom, right, bottom, 1.2);
  c.Font(kLabelSize);
  c.Colour(kTextColour);
  c.Text(chart.y_label, 14, (top + bottom) / 2, 0.5, 0, -kPi / 2);
  return c.Png();
}

}  // namespace ft::client::report
