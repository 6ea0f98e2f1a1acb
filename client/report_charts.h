// The charts of `ftctl report`, drawn with cairo (Debian's libcairo2) and
// returned as PNG bytes: line charts with axes, ticks and a legend, a heat
// map with a colour scale and its cells' numbers, and grouped bar charts.
// Text uses cairo's toy font API with DejaVu Sans (fonts-dejavu-core).
#ifndef FT_CLIENT_REPORT_CHARTS_H_
#define FT_CLIENT_REPORT_CHARTS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace ft::client::report {

// 0xRRGGBB.
using Rgb = uint32_t;

// A qualitative palette (matplotlib's tab10), for series in order.
Rgb PaletteColour(size_t i);

// One line of a line chart, or one group of bars of a bar chart (then `x`
// is unused and `y` has one value per category).
struct Series {
  Series() = default;
  Series(std::string label, Rgb colour, bool dashed = false)
      : label(std::move(label)), colour(colour), dashed(dashed) {}

  std::string label;  // in the legend
  std::vector<double> x;
  std::vector<double> y;
  Rgb colour = 0x1f77b4;
  bool dashed = false;
};

struct LineChart {
  std::string title;
  std::string x_label;
  std::string y_label;
  std::vector<Series> series;
  // Ticks on whole numbers only (epochs).
  bool integer_x = false;
  // A fixed y range (accuracy: 0 to 1); else the data's, rounded to ticks.
  std::optional<double> y_min;
  std::optional<double> y_max;
  // Dotted vertical lines at these x (epoch boundaries of a per-step curve).
  std::vector<double> x_marks;
  int width = 600;  // logical pixels; the PNG has `scale` times as many
  int height = 360;
};

struct HeatMap {
  std::string title;
  std::vector<std::string> labels;  // rows and columns, in order
  std::vector<int64_t> cells;       // row-major, labels.size() squared
  std::string row_label = "true class";
  std::string column_label = "predicted class";
};

struct BarChart {
  std::string title;
  std::string y_label;
  std::vector<std::string> categories;
  std::vector<Series> groups;  // each with one y per category
  double y_min = 0;
  double y_max = 1;
};

// Each renders at `scale` device pixels per logical pixel (2: sharp on
// high-density screens) and returns the PNG. INVALID_ARGUMENT when the
// input does not describe a chart (no series, mismatched sizes, a non-square
// matrix, non-finite values), INTERNAL when cairo fails.
absl::StatusOr<std::string> RenderLineChart(const LineChart& chart, int scale = 2);
// Cells are coloured by their share of their row (the true class), so
// classes of any size read alike; the numbers are the counts.
absl::StatusOr<std::string> RenderHeatMap(const HeatMap& map, int scale = 2);
absl::StatusOr<std::string> RenderBarChart(const BarChart& chart, int scale = 2);

// "Nice" tick values covering [lo, hi] (1, 2 or 5 times a power of ten),
// about `target` of them; the first is <= lo and the last >= hi.
std::vector<double> NiceTicks(double lo, double hi, int target);
// Tick labels, with as many decimals as the ticks' step needs (0.2: "0.4").
std::vector<std::string> TickLabels(const std::vector<double>& ticks);

}  // namespace ft::client::report

#endif  // FT_CLIENT_REPORT_CHARTS_H_
