// The one table of who may call what: every RPC of FineTune and
// WorkerGateway, the roles allowed to call it, and whether it changes state
// (and so is written to the audit log). tests/unit/rpc_table_test.cc fails
// when a method of the protos has no row.
#ifndef FT_SERVER_AUTH_RPC_TABLE_H_
#define FT_SERVER_AUTH_RPC_TABLE_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "server/auth/identity.h"

namespace ft::server::auth {

struct RpcRule {
  // gRPC's full method name, "/finetune.v1.FineTune/SubmitJob".
  absl::string_view method;
  std::vector<Role> roles;
  // Changes state: one audit line per call.
  bool mutates = false;
};

// Every row, FineTune's methods first, in the protos' order.
const std::vector<RpcRule>& RpcTable();

// The row for `method`, or null when it has none.
const RpcRule* FindRpc(absl::string_view method);

// Methods open to anyone, token or not: health checks (probes and load
// balancers have no token) and server reflection (the schema is public).
bool IsOpenMethod(absl::string_view method);

// Whether `role` may call `rule`'s method.
bool Allows(const RpcRule& rule, Role role);

// The table as text, one method a line: "METHOD ROLE,ROLE [mutates]", for
// finetuned --print-auth-table and the tests that compare against it.
std::string RpcTableText();

}  // namespace ft::server::auth

#endif  // FT_SERVER_AUTH_RPC_TABLE_H_
