// The server's side of TLS: credentials from PEM files, and the name local
// workers must check the certificate against when they dial loopback.
#ifndef FT_SERVER_AUTH_TLS_H_
#define FT_SERVER_AUTH_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"

namespace ft::server::auth {

struct ServerTlsOptions {
  // PEM certificate chain and key; both empty: plaintext.
  std::string cert;
  std::string key;
  // PEM CA bundle; set: every client must present a certificate it signed.
  std::string client_ca;
};

// INVALID_ARGUMENT for a key without a certificate (or the reverse), or a
// client CA without either; the file errors of util::ReadFile, naming the flag.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const ServerTlsOptions& options);

// What a client dialling 127.0.0.1 must expect the certificate in
// `cert_path` to name: "" when it names IP 127.0.0.1 (no override needed),
// else its first DNS name (subjectAltName, then the common name).
// INVALID_ARGUMENT when the file holds no certificate.
absl::StatusOr<std::string> LoopbackServerName(const std::string& cert_path);

}  // namespace ft::server::auth

#endif  // FT_SERVER_AUTH_TLS_H_
