// `ftctl report JOB --out DIR`: one self-contained HTML page about a
// finished job (its charts and thumbnails embedded as data: URIs, its CSS
// inline, no scripts, nothing fetched), and each chart as a PNG beside it.
#ifndef FT_CLIENT_FTCTL_REPORT_H_
#define FT_CLIENT_FTCTL_REPORT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"

namespace ft::client::ftctl {

// What a report is drawn from.
struct ReportData {
  pb::Job job;
  // The job's event log in sequence order (WatchJob from sequence 1).
  std::vector<pb::JobEvent> events;
  // The class names in label order; empty when unknown (then "class 0", ...).
  std::vector<std::string> classes;
};

struct ReportFiles {
  std::string html;                 // DIR/report.html
  std::vector<std::string> charts;  // DIR/<chart>.png, in page order
  // Which split the per-class figures come from: "test", "val", or ""
  // when the job has none (it ended before its final evaluation).
  std::string split;
};

// Writes the report of `data` into the existing folder `dir`. INTERNAL
// naming the file that could not be written; a chart that cannot be drawn
// is left out with a note on the page.
absl::StatusOr<ReportFiles> WriteReport(const ReportData& data, const std::string& dir);

}  // namespace ft::client::ftctl

#endif  // FT_CLIENT_FTCTL_REPORT_H_
