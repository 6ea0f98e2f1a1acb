#ifndef FT_SERVER_JOBS_DATASET_USAGE_H_
#define FT_SERVER_JOBS_DATASET_USAGE_H_

#include <string>

#include "absl/status/status.h"
#include "server/jobs/job_manager.h"

namespace ft::server {

// Deletes `tenant`'s uploaded dataset `name`, unless a queued or running job names
// it (dataset://NAME, in the same tenant): then FAILED_PRECONDITION naming those jobs, since
// their workers still need its files. NOT_FOUND for an unknown name;
// FAILED_PRECONDITION when the manager has no dataset store.
//
// A job submitted while the delete runs can still be queued (pre-flight and
// the delete do not share a lock); it then fails on its worker with
// "dataset ... not found", which names the problem.
absl::Status DeleteUnusedDataset(JobManager* manager, const std::string& tenant, const std::string& name);

}  // namespace ft::server

#endif  // FT_SERVER_JOBS_DATASET_USAGE_H_
