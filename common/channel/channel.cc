#include "common/channel/channel.h"

#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/util/files.h"
#include "common/util/status.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/client_interceptor.h"

namespace ft::channel {
namespace {

using grpc::experimental::ClientInterceptorFactoryInterface;
using grpc::experimental::ClientRpcInfo;
using grpc::experimental::InterceptionHookPoints;
using grpc::experimental::Interceptor;
using grpc::experimental::InterceptorBatchMethods;

// Adds the token to every call's initial metadata. An interceptor rather
// than call credentials: gRPC refuses to send call credentials over a
// plaintext channel, and a loopback server with --auth-file but no TLS still
// needs the token.
class TokenInterceptor final : public Interceptor {
 public:
  explicit TokenInterceptor(const std::string* header) : header_(header) {}
  void Intercept(InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", *header_});
    }
    methods->Proceed();
  }

 private:
  const std::string* header_;
};

class TokenInterceptorFactory final : public ClientInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(std::string token) : header_(absl::StrCat("Bearer ", token)) {}
  Interceptor* CreateClientInterceptor(ClientRpcInfo* /*info*/) override { return new TokenInterceptor(&header_); }

 private:
  const std::string header_;
};

bool IsHeaderSafe(const std::string& token) {
  for (char c : token) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* flag) {
  auto pem = util::ReadFile(path);
  if (!pem.ok()) return absl::Status(pem.status().code(), absl::StrCat(flag, ": ", pem.status().message()));
  return pem;
}

}  // namespace

bool UsesTls(const ChannelOptions& options) {
  return options.tls || !options.tls_ca.empty() || !options.tls_cert.empty();
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ChannelOptions& options) {
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!IsHeaderSafe(options.token)) {
    return absl::InvalidArgumentError("the token must be printable ASCII without spaces");
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (UsesTls(options)) {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_ca.empty()) {
      FT_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(options.tls_ca, "--tls-ca"));
    }
    if (!options.tls_cert.empty()) {
      FT_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPem(options.tls_cert, "--tls-cert"));
      FT_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPem(options.tls_key, "--tls-key"));
    }
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  std::vector<std::unique_ptr<ClientInterceptorFactoryInterface>> interceptors;
  if (!options.token.empty()) interceptors.push_back(std::make_unique<TokenInterceptorFactory>(options.token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(options.address, credentials, args,
                                                                 std::move(interceptors));
}

absl::StatusOr<std::string> ResolveToken(const std::string& token, const std::string& token_file,
                                         const char* env_var) {
  if (!token.empty()) return token;
  if (!token_file.empty()) {
    auto text = util::ReadFile(token_file);
    if (!text.ok()) {
      return absl::Status(text.status().code(), absl::StrCat("--token-file: ", text.status().message()));
    }
    const std::string first_line = text->substr(0, text->find('\n'));
    std::string trimmed(absl::StripAsciiWhitespace(first_line));
    if (trimmed.empty()) return absl::InvalidArgumentError(absl::StrCat("--token-file ", token_file, " is empty"));
    return trimmed;
  }
  const char* env = env_var != nullptr ? std::getenv(env_var) : nullptr;
  return std::string(env != nullptr ? env : "");
}

std::string UnreachableHint(const ChannelOptions& options) {
  if (!UsesTls(options)) {
    return "if finetuned serves TLS, pass --tls-ca FILE (its CA) or --tls (the system roots)";
  }
  return "check that --tls-ca names the CA that signed the server's certificate, and --tls-server-name if the "
         "certificate does not name the host you dial";
}

}  // namespace ft::channel
