// server/auth: the RPC table against the protos' descriptors, every
// method x role verdict against the roles as the design states them
// (written out here again, independently of the table), tokens, the auth
// file and its reload.
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "common/util/sha256.h"
#include "finetune/v1/finetune.pb.h"
#include "finetune/v1/worker.pb.h"
#include "google/protobuf/descriptor.h"
#include "gtest/gtest.h"
#include "server/auth/auth_file.h"
#include "server/auth/authenticator.h"
#include "server/auth/call_guard.h"
#include "server/auth/rpc_table.h"
#include "test_dirs.h"

namespace ft::server::auth {
namespace {

namespace pb = ::finetune::v1;

std::vector<std::string> ProtoMethods() {
  std::vector<std::string> out;
  for (const google::protobuf::ServiceDescriptor* s :
       {pb::SubmitJobRequest::descriptor()->file()->FindServiceByName("FineTune"),
        pb::LeaseJobRequest::descriptor()->file()->FindServiceByName("WorkerGateway")}) {
    EXPECT_NE(s, nullptr);
    if (s == nullptr) continue;
    for (int i = 0; i < s->method_count(); ++i) {
      out.push_back("/" + s->full_name() + "/" + s->method(i)->name());
    }
  }
  return out;
}

TEST(RpcTable, EveryProtoMethodHasARowAndEveryRowAMethod) {
  const std::vector<std::string> methods = ProtoMethods();
  ASSERT_GE(methods.size(), 22u);
  for (const std::string& m : methods) EXPECT_NE(FindRpc(m), nullptr) << m << " has no row in rpc_table.cc";
  const std::set<std::string> known(methods.begin(), methods.end());
  for (const RpcRule& rule : RpcTable()) {
    EXPECT_EQ(known.count(std::string(rule.method)), 1u) << rule.method << " is in no proto";
    EXPECT_FALSE(rule.roles.empty()) << rule.method;
  }
}

// The roles of the design, spelled out by method name.
bool Expected(const std::string& method, Role role) {
  static const std::set<std::string> kViewer = {"GetJob",        "ListJobs",   "WatchJob",    "ListModels",
                                                "GetModel",      "DownloadModel", "GetDataset", "ListDatasets"};
  const bool gateway = method.rfind("/finetune.v1.WorkerGateway/", 0) == 0;
  const std::string name = method.substr(method.rfind('/') + 1);
  switch (role) {
    case Role::kAdmin:
      return true;
    case Role::kUser:
      return !gateway;
    case Role::kViewer:
      return !gateway && kViewer.count(name) > 0;
    case Role::kWorker:
      return gateway;
  }
  return false;
}

class AuthFileTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = ft::testing::FreshTestDir("auth_test"); }

  std::string Write(const std::string& text) {
    const std::string path = (dir_ / "auth.json").string();
    std::ofstream(path) << text;
    return path;
  }

  static std::string Entry(const std::string& name, const std::string& role, const std::string& token) {
    return "{\"name\": \"" + name + "\", \"tenant\": \"t1\", \"role\": \"" + role + "\", \"token_sha256\": \"" +
           util::Sha256Hex(token) + "\"}";
  }

  std::string FourRoles() {
    return Write("{\"identities\": [" + Entry("ann", "admin", "tok-admin") + ", " + Entry("uma", "user", "tok-user") +
                 ", " + Entry("vic", "viewer", "tok-viewer") + ", " + Entry("wes", "worker", "tok-worker") + "]}");
  }

  std::filesystem::path dir_;
};

TEST_F(AuthFileTest, EveryMethodAndRoleMatchesTheDesign) {
  auto a = Authenticator::Create({FourRoles(), {}});
  ASSERT_TRUE(a.ok()) << a.status();
  const std::vector<std::pair<Role, std::string>> callers = {
      {Role::kAdmin, "Bearer tok-admin"}, {Role::kUser, "Bearer tok-user"},
      {Role::kViewer, "Bearer tok-viewer"}, {Role::kWorker, "Bearer tok-worker"}};
  int checked = 0;
  for (const std::string& m : ProtoMethods()) {
    for (const auto& [role, header] : callers) {
      CallDecision d = Decide(**a, m, {header});
      ASSERT_NE(d.identity, nullptr);
      EXPECT_EQ(d.identity->role, role);
      if (Expected(m, role)) {
        EXPECT_TRUE(d.status.ok()) << m << " as " << RoleName(role) << ": " << d.status;
      } else {
        EXPECT_EQ(d.status.code(), absl::StatusCode::kPermissionDenied) << m << " as " << RoleName(role);
        EXPECT_EQ(d.failure, AuthFailure::kPermissionDenied);
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 22 * 4);
}

TEST_F(AuthFileTest, BadTokensAreUnauthenticated) {
  auto a = Authenticator::Create({FourRoles(), {}});
  ASSERT_TRUE(a.ok()) << a.status();
  const std::string m = "/finetune.v1.FineTune/GetJob";
  struct Case {
    std::vector<absl::string_view> headers;
    AuthFailure failure;
  };
  const std::string huge = "Bearer " + std::string(100000, 'x');
  for (const Case& c : std::vector<Case>{{{}, AuthFailure::kMissingToken},
                                         {{"Bearer nope"}, AuthFailure::kUnknownToken},
                                         {{"tok-admin"}, AuthFailure::kMalformed},
                                         {{"Basic dG9rLWFkbWlu"}, AuthFailure::kMalformed},
                                         {{"Bearer "}, AuthFailure::kMalformed},
                                         {{huge}, AuthFailure::kMalformed},
                                         {{"Bearer tok-admin", "Bearer tok-user"}, AuthFailure::kMalformed}}) {
    CallDecision d = Decide(**a, m, c.headers);
    EXPECT_EQ(d.status.code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(d.failure, c.failure) << AuthFailureName(d.failure);
    EXPECT_EQ(d.identity, nullptr);
    EXPECT_EQ(d.status.message().find("tok-"), absl::string_view::npos) << "a token in an error: " << d.status;
  }
  // The scheme is case-insensitive (RFC 7235).
  EXPECT_TRUE(Decide(**a, m, {"bearer tok-viewer"}).status.ok());
}

TEST_F(AuthFileTest, HealthIsOpenAndUnknownMethodsAreNobodys) {
  auto a = Authenticator::Create({FourRoles(), {}});
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(Decide(**a, "/grpc.health.v1.Health/Check", {}).status.ok());
  EXPECT_EQ(Decide(**a, "/finetune.v1.FineTune/Backdoor", {"Bearer tok-admin"}).status.code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(Anonymous, WithoutAnAuthFileEveryCallIsTheDefaultAdmin) {
  auto a = Authenticator::Create({});
  ASSERT_TRUE(a.ok());
  for (const std::string& m : ProtoMethods()) {
    CallDecision d = Decide(**a, m, {});
    EXPECT_TRUE(d.status.ok()) << m;
    ASSERT_NE(d.identity, nullptr);
    EXPECT_EQ(d.identity->name, "anonymous");
    EXPECT_EQ(d.identity->tenant, "default");
    EXPECT_EQ(d.identity->role, Role::kAdmin);
  }
}

TEST_F(AuthFileTest, ReloadRevokesAndABadFileKeepsTheOldIdentities) {
  const std::string path = FourRoles();
  auto a = Authenticator::Create({path, {}});
  ASSERT_TRUE(a.ok());
  const std::string m = "/finetune.v1.FineTune/ListJobs";
  ASSERT_TRUE(Decide(**a, m, {"Bearer tok-user"}).status.ok());
  Write("{\"identities\": [" + Entry("ann", "admin", "tok-admin") + "]}");
  ASSERT_TRUE((*a)->Reload().ok());
  EXPECT_EQ(Decide(**a, m, {"Bearer tok-user"}).failure, AuthFailure::kUnknownToken);
  EXPECT_TRUE(Decide(**a, m, {"Bearer tok-admin"}).status.ok());
  Write("{\"identities\": [{\"name\": \"x\"");
  absl::Status bad = (*a)->Reload();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find(path), absl::string_view::npos) << bad;
  EXPECT_TRUE(Decide(**a, m, {"Bearer tok-admin"}).status.ok()) << "the old identities must stay";
}

TEST_F(AuthFileTest, BuiltinIdentitiesSurviveReloads) {
  Identity worker;
  worker.name = "local-workers";
  worker.tenant = "default";
  worker.role = Role::kWorker;
  worker.token_sha256 = util::Sha256Hex("minted");
  auto a = Authenticator::Create({FourRoles(), {worker}});
  ASSERT_TRUE(a.ok());
  Write("{\"identities\": []}");
  ASSERT_TRUE((*a)->Reload().ok());
  EXPECT_TRUE(Decide(**a, "/finetune.v1.WorkerGateway/LeaseJob", {"Bearer minted"}).status.ok());
  EXPECT_EQ((*a)->file_identities(), 0);
}

TEST(AuthFile, ParsesDatasetRootsAndQuota) {
  const std::string hash(64, 'A');
  auto ids = ParseAuthFile(R"({"identities": [{"name": "alice", "tenant": "vision", "role": "user",
      "token_sha256": ")" + hash + R"(", "dataset_roots": ["/data/vision"],
      "quota": {"max_queued_jobs": 5, "max_storage_bytes": 1000000}}]})");
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(ids->size(), 1u);
  const Identity& id = (*ids)[0];
  EXPECT_EQ(id.tenant, "vision");
  EXPECT_EQ(id.role, Role::kUser);
  EXPECT_EQ(id.token_sha256, std::string(64, 'a'));
  EXPECT_EQ(id.dataset_roots, std::vector<std::string>{"/data/vision"});
  EXPECT_EQ(id.quota.max_queued_jobs, 5);
  EXPECT_EQ(id.quota.max_storage_bytes, 1000000);
}

TEST(AuthFile, RefusesBadEntriesNamingTheField) {
  const std::string h(64, 'a');
  auto entry = [&](const std::string& extra, const std::string& role = "user", const std::string& hash = "") {
    return R"({"identities": [{"name": "a", "tenant": "t", "role": ")" + role + R"(", "token_sha256": ")" +
           (hash.empty() ? h : hash) + "\"" + extra + "}]}";
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", "not valid JSON"},
      {"{}", "identities"},
      {entry("", "root"), "identities[0].role"},
      {entry("", "user", "abc"), "identities[0].token_sha256"},
      {entry(R"(, "qouta": {})"), "identities[0].qouta: unknown field"},
      {entry(R"(, "quota": {"max_queued_jobs": -1})"), "identities[0].quota.max_queued_jobs"},
      {entry(R"(, "dataset_roots": ["relative"])"), "identities[0].dataset_roots[0]"},
      {R"({"identities": [{"name": "a b", "tenant": "t", "role": "user", "token_sha256": ")" + h + "\"}]}",
       "identities[0].name"},
      {R"({"identities": [{"name": "a", "tenant": "t", "role": "user", "token_sha256": ")" + h +
           R"("}, {"name": "a", "tenant": "t", "role": "user", "token_sha256": ")" + std::string(64, 'b') + "\"}]}",
       "appears twice"},
      {R"({"identities": [{"name": "a", "tenant": "t", "role": "user", "token_sha256": ")" + h +
           R"("}, {"name": "b", "tenant": "t", "role": "user", "token_sha256": ")" + h + "\"}]}",
       "same token"},
  };
  for (const auto& [text, needle] : cases) {
    auto ids = ParseAuthFile(text);
    ASSERT_FALSE(ids.ok()) << text;
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(ids.status().message().find(needle), absl::string_view::npos) << ids.status() << " for " << text;
  }
}

TEST(RpcTable, TextHasOneLinePerRow) {
  const std::string text = RpcTableText();
  EXPECT_EQ(static_cast<size_t>(std::count(text.begin(), text.end(), '\n')), RpcTable().size());
  EXPECT_NE(text.find("/finetune.v1.FineTune/SubmitJob admin,user mutates\n"), std::string::npos) << text;
}

}  // namespace
}  // namespace ft::server::auth
