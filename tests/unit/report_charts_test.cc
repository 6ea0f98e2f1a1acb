// The charts of `ftctl report`: real PNGs from cairo, read back with cairo,
// of the promised size, with the series' colours drawn; bad input refused.
#include "client/report_charts.h"

#include <cairo.h>

#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace ft::client::report {
namespace {

struct Pixels {
  int width = 0;
  int height = 0;
  std::vector<uint32_t> rgb;  // 0xRRGGBB, row-major
};

// Decodes a PNG with cairo.
Pixels Decode(const std::string& png) {
  struct Reader {
    const std::string* data;
    size_t at = 0;
  } reader{&png};
  cairo_surface_t* s = cairo_image_surface_create_from_png_stream(
      [](void* closure, unsigned char* out, unsigned int length) {
        auto* r = static_cast<Reader*>(closure);
        if (r->at + length > r->data->size()) return CAIRO_STATUS_READ_ERROR;
        std::copy(r->data->begin() + static_cast<std::ptrdiff_t>(r->at),
                  r->data->begin() + static_cast<std::ptrdiff_t>(r->at + length), out);
        r->at += length;
        return CAIRO_STATUS_SUCCESS;
      },
      &reader);
  Pixels p;
  if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS) {
    cairo_surface_destroy(s);
    return p;
  }
  p.width = cairo_image_surface_get_width(s);
  p.height = cairo_image_surface_get_height(s);
  const int stride = cairo_image_surface_get_stride(s);
  const unsigned char* data = cairo_image_surface_get_data(s);
  for (int y = 0; y < p.height; ++y) {
    const auto* row = reinterpret_cast<const uint32_t*>(data + y * stride);
    for (int x = 0; x < p.width; ++x) p.rgb.push_back(row[x] & 0xffffff);
  }
  cairo_surface_destroy(s);
  return p;
}

size_t Count(const Pixels& p, uint32_t colour) {
  size_t n = 0;
  for (uint32_t c : p.rgb) n += c == colour;
  return n;
}

size_t DistinctColours(const Pixels& p) { return std::set<uint32_t>(p.rgb.begin(), p.rgb.end()).size(); }

Series Points(const std::string& label, std::vector<double> x, std::vector<double> y, Rgb colour) {
  Series s(label, colour);
  s.x = std::move(x);
  s.y = std::move(y);
  return s;
}

LineChart Chart(const std::string& title, std::vector<Series> series, bool integer_x = false) {
  LineChart c;
  c.title = title;
  c.x_label = integer_x ? "epoch" : "step";
  c.y_label = "loss";
  c.series = std::move(series);
  c.integer_x = integer_x;
  return c;
}

TEST(NiceTicks, CoverTheRangeWithRoundSteps) {
  const std::vector<double> unit = NiceTicks(0, 1, 6);
  ASSERT_EQ(unit.size(), 6u);
  for (size_t i = 0; i < unit.size(); ++i) EXPECT_NEAR(unit[i], 0.2 * i, 1e-12);
  const std::vector<double> t = NiceTicks(0.93, 1.21, 6);
  ASSERT_GE(t.size(), 3u);
  EXPECT_LE(t.front(), 0.93);
  EXPECT_GE(t.back(), 1.21);
  EXPECT_NEAR(t[1] - t[0], 0.1, 1e-12);
  const std::vector<double> lr = NiceTicks(0.00003, 0.00097, 6);
  EXPECT_NEAR(lr[1] - lr[0], 0.0002, 1e-15);
  EXPECT_EQ(TickLabels({0, 0.2, 0.4}), (std::vector<std::string>{"0.0", "0.2", "0.4"}));
  EXPECT_EQ(TickLabels({1.05, 1.1, 1.15}), (std::vector<std::string>{"1.05", "1.10", "1.15"}));
  EXPECT_EQ(TickLabels({0.00095, 0.001, 0.00105}), (std::vector<std::string>{"0.00095", "0.00100", "0.00105"}));
  EXPECT_EQ(TickLabels({0, 500, 1000, 1500}), (std::vector<std::string>{"0", "500", "1000", "1500"}));
  EXPECT_EQ(TickLabels({3}), (std::vector<std::string>{"3"}));
}

TEST(LineChart, IsAPngOfTheGivenSizeWithBothSeries) {
  const LineChart chart = Chart("Loss per epoch",
                                {Points("train", {1, 2, 3}, {1.2, 0.8, 0.5}, 0x1f77b4),
                                 Points("val", {1, 2, 3}, {1.3, 1.0, 0.9}, 0xff7f0e)},
                                /*integer_x=*/true);
  auto png = RenderLineChart(chart, /*scale=*/2);
  ASSERT_TRUE(png.ok()) << png.status();
  ASSERT_EQ(png->substr(1, 3), "PNG");
  const Pixels p = Decode(*png);
  EXPECT_EQ(p.width, 1200);
  EXPECT_EQ(p.height, 720);
  // Lines, markers and legend in each series' own colour; text and grid in greys.
  EXPECT_GT(Count(p, 0x1f77b4), 500u);
  EXPECT_GT(Count(p, 0xff7f0e), 500u);
  EXPECT_GT(DistinctColours(p), 50u);
  EXPECT_GT(Count(p, 0xffffff), p.rgb.size() / 2);  // mostly background
}

TEST(LineChart, OneValueAndManyPointsStillDraw) {
  const LineChart flat = Chart("Learning rate", {Points("lr", {1, 2, 3}, {0.001, 0.001, 0.001}, 0x2ca02c)}, true);
  auto png = RenderLineChart(flat, 1);
  ASSERT_TRUE(png.ok()) << png.status();
  EXPECT_GT(Count(Decode(*png), 0x2ca02c), 200u);
  LineChart steps = Chart("Per step", {});
  Series s("train", 0xd62728);
  for (int i = 1; i <= 500; ++i) {
    s.x.push_back(i);
    s.y.push_back(2.0 / std::sqrt(i));
  }
  steps.series = {s};
  steps.x_marks = {100, 200, 300, 400};
  auto png2 = RenderLineChart(steps, 1);
  ASSERT_TRUE(png2.ok()) << png2.status();
  EXPECT_GT(Count(Decode(*png2), 0xd62728), 300u);
}

TEST(LineChart, RefusesBadSeries) {
  LineChart bad = Chart("x", {Points("s", {1, 2}, {1}, 0)});
  EXPECT_EQ(RenderLineChart(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.series = {Points("s", {1, 2}, {1, NAN}, 0)};
  EXPECT_EQ(RenderLineChart(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.series = {};
  EXPECT_EQ(RenderLineChart(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HeatMap, ColoursCellsByTheirRowShare) {
  // A perfect diagonal: the darkest blue on the diagonal, white elsewhere.
  HeatMap map;
  map.title = "Confusion";
  map.labels = {"cat", "dog", "a rather long class name indeed"};
  map.cells = {5, 0, 0, 0, 7, 0, 0, 0, 1};
  auto png = RenderHeatMap(map, 1);
  ASSERT_TRUE(png.ok()) << png.status();
  const Pixels p = Decode(*png);
  EXPECT_GT(p.width, 300);
  EXPECT_GT(Count(p, 0x08306b), 3u * 100u);  // three cells of >= 10x10 px
  EXPECT_GT(DistinctColours(p), 30u);        // text, scale, cells
  map.cells.pop_back();
  EXPECT_EQ(RenderHeatMap(map).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RenderHeatMap(HeatMap()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BarChart, DrawsEveryGroup) {
  BarChart chart;
  chart.title = "Per class";
  chart.y_label = "score";
  chart.categories = {"a", "b", "c"};
  chart.groups = {Points("precision", {}, {1, 0.5, 0.25}, 0x1f77b4), Points("recall", {}, {0.5, 1, 0.75}, 0xff7f0e),
                  Points("F1", {}, {0.66, 0.66, 0.375}, 0x2ca02c)};
  auto png = RenderBarChart(chart, 1);
  ASSERT_TRUE(png.ok()) << png.status();
  const Pixels p = Decode(*png);
  for (uint32_t c : {0x1f77b4u, 0xff7f0eu, 0x2ca02cu}) EXPECT_GT(Count(p, c), 500u) << std::hex << c;
  chart.groups[1].y.pop_back();
  EXPECT_EQ(RenderBarChart(chart).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ft::client::report
