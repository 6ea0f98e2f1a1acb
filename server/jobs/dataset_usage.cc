#include "server/jobs/dataset_usage.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/util/status.h"
#include "server/datasets/resolver.h"

namespace ft::server {
namespace {
constexpr int kMaxJobsChecked = 1000000;
}  // namespace

absl::Status DeleteUnusedDataset(JobManager* manager, const std::string& tenant, const std::string& name) {
  datasets::DatasetStore* store = manager->dataset_store();
  if (store == nullptr) return absl::FailedPreconditionError("this server does not keep uploaded datasets");
  if (!datasets::IsValidDatasetName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("name: '", name, "' is not a dataset name"));
  }
  return store->Delete(tenant, name, [manager, &tenant, &name](const pb::Dataset&) -> absl::Status {
    FT_ASSIGN_OR_RETURN(std::vector<pb::Job> jobs,
                        manager->store()->ListJobs({pb::QUEUED, pb::RUNNING}, kMaxJobsChecked, tenant));
    std::vector<std::string> users;
    for (const auto& job : jobs) {
      auto uri = datasets::ParseDatasetUri(job.spec().dataset_uri(), "dataset_uri");
      if (uri.ok() && uri->dataset_name == name) users.push_back(job.id());
    }
    if (users.empty()) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "dataset ", name, " is used by ", users.size(), " queued or running job(s): ", absl::StrJoin(users, ", "),
        "; cancel them or wait until they end"));
  });
}

}  // namespace ft::server
