#include "worker/agent/credentials.h"

#include <cstdlib>

#include "common/channel/channel.h"

namespace ft::worker {
namespace {

std::string OrEnv(const std::string& flag, const char* name) {
  if (!flag.empty()) return flag;
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> WorkerChannel(const std::string& server,
                                                             const WorkerTransport& t) {
  channel::ChannelOptions o;
  o.address = server;
  o.tls = t.tls;
  o.tls_ca = OrEnv(t.tls_ca, "FINETUNE_TLS_CA");
  o.tls_cert = OrEnv(t.tls_cert, "FINETUNE_TLS_CERT");
  o.tls_key = OrEnv(t.tls_key, "FINETUNE_TLS_KEY");
  o.tls_server_name = OrEnv(t.tls_server_name, "FINETUNE_TLS_SERVER_NAME");
  auto token = channel::ResolveToken("", t.token_file, "FINETUNE_TOKEN");
  if (!token.ok()) return token.status();
  o.token = *std::move(token);
  return channel::MakeChannel(o);
}

}  // namespace ft::worker
