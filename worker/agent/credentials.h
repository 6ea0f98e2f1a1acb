// How a worker reaches finetuned: TLS and its token, from its flags or, for
// the local workers finetuned spawns, from the environment finetuned gives
// them (server/server.cc: FINETUNE_TOKEN, FINETUNE_TLS_*).
#ifndef FT_WORKER_AGENT_CREDENTIALS_H_
#define FT_WORKER_AGENT_CREDENTIALS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"

namespace ft::worker {

// The --tls-* and --token-file flags, as ftctl spells them. An empty one
// falls back to its variable: FINETUNE_TLS_CA, FINETUNE_TLS_CERT,
// FINETUNE_TLS_KEY, FINETUNE_TLS_SERVER_NAME; the token to FINETUNE_TOKEN.
struct WorkerTransport {
  bool tls = false;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_server_name;
  std::string token_file;
};

// The channel to `server`; errors name the flag (an unreadable file, half a
// client certificate).
absl::StatusOr<std::shared_ptr<grpc::Channel>> WorkerChannel(const std::string& server,
                                                             const WorkerTransport& transport);

}  // namespace ft::worker

#endif  // FT_WORKER_AGENT_CREDENTIALS_H_
