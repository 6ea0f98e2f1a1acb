#include "server/auth/rpc_table.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ft::server::auth {
namespace {

constexpr Role kAdmin = Role::kAdmin;
constexpr Role kUser = Role::kUser;
constexpr Role kViewer = Role::kViewer;
constexpr Role kWorker = Role::kWorker;
constexpr bool kMutates = true;

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kAdmin:
      return "admin";
    case Role::kUser:
      return "user";
    case Role::kViewer:
      return "viewer";
    case Role::kWorker:
      return "worker";
  }
  return "unknown";
}

bool ParseRole(absl::string_view name, Role* role) {
  for (Role r : {kAdmin, kUser, kViewer, kWorker}) {
    if (name == RoleName(r)) {
      *role = r;
      return true;
    }
  }
  return false;
}

const std::vector<RpcRule>& RpcTable() {
  // admin: everything. user: its tenant's jobs, models and datasets.
  // viewer: reads only. worker: WorkerGateway only, and only workers and
  // admins may call WorkerGateway (a user token must not lease jobs or
  // upload models).
  static const auto* kTable = new std::vector<RpcRule>{
      {"/finetune.v1.FineTune/SubmitJob", {kAdmin, kUser}, kMutates},
      {"/finetune.v1.FineTune/GetJob", {kAdmin, kUser, kViewer}},
      {"/finetune.v1.FineTune/ListJobs", {kAdmin, kUser, kViewer}},
      {"/finetune.v1.FineTune/CancelJob", {kAdmin, kUser}, kMutates},
      {"/finetune.v1.FineTune/WatchJob", {kAdmin, kUser, kViewer}},
      {"/finetune.v1.FineTune/ListModels", {kAdmin, kUser, kViewer}},
      {"/finetune.v1.FineTune/GetModel", {kAdmin, kUser, kViewer}},
      {"/finetune.v1.FineTune/DeleteModel", {kAdmin, kUser}, kMutates},
      {"/finetune.v1.FineTune/DownloadModel", {kAdmin, kUser, kViewer}},
      // A dry run that reads the dataset and runs a tool process: costly,
      // so not for viewers, but it changes nothing.
      {"/finetune.v1.FineTune/ValidateJob", {kAdmin, kUser}},
      {"/finetune.v1.FineTune/Predict", {kAdmin, kUser}},
      {"/finetune.v1.FineTune/UploadDataset", {kAdmin, kUser}, kMutates},
      {"/finetune.v1.FineTune/GetDataset", {kAdmin, kUser, kViewer}},
      {"/finetune.v1.FineTune/ListDatasets", {kAdmin, kUser, kViewer}},
      {"/finetune.v1.FineTune/DeleteDataset", {kAdmin, kUser}, kMutates},
      {"/finetune.v1.WorkerGateway/LeaseJob", {kAdmin, kWorker}, kMutates},
      {"/finetune.v1.WorkerGateway/RunJob", {kAdmin, kWorker}, kMutates},
      {"/finetune.v1.WorkerGateway/UploadModel", {kAdmin, kWorker}, kMutates},
      {"/finetune.v1.WorkerGateway/FetchModel", {kAdmin, kWorker}},
      {"/finetune.v1.WorkerGateway/FetchDataset", {kAdmin, kWorker}},
      {"/finetune.v1.WorkerGateway/UploadCheckpoint", {kAdmin, kWorker}, kMutates},
      {"/finetune.v1.WorkerGateway/FetchCheckpoint", {kAdmin, kWorker}},
  };
  return *kTable;
}

const RpcRule* FindRpc(absl::string_view method) {
  for (const RpcRule& rule : RpcTable()) {
    if (rule.method == method) return &rule;
  }
  return nullptr;
}

bool IsOpenMethod(absl::string_view method) {
  return absl::StartsWith(method, "/grpc.health.v1.Health/") ||
         absl::StartsWith(method, "/grpc.reflection.v1alpha.ServerReflection/");
}

bool Allows(const RpcRule& rule, Role role) {
  return std::find(rule.roles.begin(), rule.roles.end(), role) != rule.roles.end();
}

std::string RpcTableText() {
  std::string out;
  for (const RpcRule& rule : RpcTable()) {
    std::vector<std::string> roles;
    for (Role r : rule.roles) roles.emplace_back(RoleName(r));
    absl::StrAppend(&out, rule.method, " ", absl::StrJoin(roles, ","), rule.mutates ? " mutates" : "", "\n");
  }
  return out;
}

}  // namespace ft::server::auth
