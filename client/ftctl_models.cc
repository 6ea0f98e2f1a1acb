// ftctl's model commands: models list, get, download and delete, and predict.
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/ftctl_handlers.h"
#include "common/util/proto_json.h"

namespace ft::client::ftctl {

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
  auto files = inv.client().DownloadModel(inv.args()[0], inv.Flag("dir"));
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
