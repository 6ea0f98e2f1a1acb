// The one way every side dials finetuned: plaintext or TLS (optionally with
// a client certificate), and a bearer token on every call. ftctl, the worker
// and the tests' clients all build their channel here, so the flags mean the
// same everywhere.
#ifndef FT_COMMON_CHANNEL_CHANNEL_H_
#define FT_COMMON_CHANNEL_CHANNEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"

namespace ft::channel {

struct ChannelOptions {
  // host:port of finetuned.
  std::string address;
  // TLS against the system roots; implied by tls_ca or tls_cert.
  bool tls = false;
  // PEM file of the CA that signed the server's certificate.
  std::string tls_ca;
  // PEM files of a client certificate and its key, for a server that
  // requires one (finetuned --tls-client-ca). Both or neither.
  std::string tls_cert;
  std::string tls_key;
  // The name the server's certificate must carry when it is not the host
  // in `address` (e.g. dialling 127.0.0.1 with a certificate for a DNS name).
  std::string tls_server_name;
  // Sent as "authorization: Bearer <token>" on every call; empty sends none.
  std::string token;
  int max_receive_message_bytes = 64 << 20;
};

// Whether `options` asks for TLS.
bool UsesTls(const ChannelOptions& options);

// A channel as `options` say. INVALID_ARGUMENT for half a client certificate
// or a token that cannot be a header value; NOT_FOUND or PERMISSION_DENIED
// for an unreadable PEM file. Connecting is lazy: an unreachable server or a
// failed handshake is each call's UNAVAILABLE.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ChannelOptions& options);

// The token to use: `token` when set, else the first line of `token_file`
// (surrounding white space dropped) when set, else $`env_var` (may be empty).
// The file is read so that a token need never be in argv, where `ps` shows
// it to everyone on the machine.
absl::StatusOr<std::string> ResolveToken(const std::string& token, const std::string& token_file,
                                         const char* env_var);

// What to tell a person whose call got UNAVAILABLE: with plaintext, that the
// server may serve TLS; with TLS, that the CA may be the wrong one. Empty when
// there is nothing useful to add.
std::string UnreachableHint(const ChannelOptions& options);

}  // namespace ft::channel

#endif  // FT_COMMON_CHANNEL_CHANNEL_H_
