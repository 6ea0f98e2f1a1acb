#ifndef FT_CLIENT_FTCTL_HANDLERS_H_
#define FT_CLIENT_FTCTL_HANDLERS_H_

// The handlers of ftctl's commands, one per row of its table (client/ftctl.cc).
// Each runs after Run() has checked its flags, the number of its arguments
// and its required flags against that row, and returns ftctl's exit code.

#include "client/ftctl_commands.h"

namespace ft::client::ftctl {

// client/ftctl_jobs.cc
int Submit(Invocation& inv);
int Validate(Invocation& inv);
int GetJob(Invocation& inv);
int ListJobs(Invocation& inv);
int WatchJob(Invocation& inv);
int CancelJob(Invocation& inv);
int Health(Invocation& inv);

// client/ftctl_models.cc
int ListModels(Invocation& inv);
int GetModel(Invocation& inv);
int DownloadModel(Invocation& inv);
int DeleteModel(Invocation& inv);
int Predict(Invocation& inv);

// client/ftctl_datasets.cc. A DIR is packed into a deterministic tar in
// $TMPDIR first (deleted afterwards).
int UploadDataset(Invocation& inv);
int GetDataset(Invocation& inv);
int ListDatasets(Invocation& inv);
int DeleteDataset(Invocation& inv);

// client/ftctl_auth.cc. Talks to no server.
int NewToken(Invocation& inv);

// client/ftctl_report.cc. A finished job only (exit 2 while it is queued or
// running); FAILED and CANCELLED jobs get what they recorded.
int Report(Invocation& inv);

}  // namespace ft::client::ftctl

#endif  // FT_CLIENT_FTCTL_HANDLERS_H_
