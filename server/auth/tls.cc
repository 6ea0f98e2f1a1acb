#include "server/auth/tls.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/util/files.h"
#include "common/util/status.h"

namespace ft::server::auth {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* flag) {
  auto pem = util::ReadFile(path);
  if (!pem.ok()) return absl::Status(pem.status().code(), absl::StrCat(flag, ": ", pem.status().message()));
  return pem;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const ServerTlsOptions& o) {
  if (o.cert.empty() != o.key.empty()) return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  if (o.cert.empty()) {
    if (!o.client_ca.empty()) return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions ssl(o.client_ca.empty()
                                            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  FT_ASSIGN_OR_RETURN(pair.cert_chain, ReadPem(o.cert, "--tls-cert"));
  FT_ASSIGN_OR_RETURN(pair.private_key, ReadPem(o.key, "--tls-key"));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!o.client_ca.empty()) {
    FT_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(o.client_ca, "--tls-client-ca"));
  }
  return grpc::SslServerCredentials(ssl);
}

absl::StatusOr<std::string> LoopbackServerName(const std::string& cert_path) {
  FT_ASSIGN_OR_RETURN(std::string pem, ReadPem(cert_path, "--tls-cert"));
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* cert = bio != nullptr ? PEM_read_bio_X509(bio, nullptr, nullptr, nullptr) : nullptr;
  BIO_free(bio);
  if (cert == nullptr) return absl::InvalidArgumentError(absl::StrCat("--tls-cert ", cert_path, ": no PEM certificate"));
  std::string dns;
  bool loopback_ip = false;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names != nullptr && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
    if (n->type == GEN_IPADD && n->d.iPAddress->length == 4) {
      const unsigned char* ip = n->d.iPAddress->data;
      loopback_ip |= ip[0] == 127 && ip[1] == 0 && ip[2] == 0 && ip[3] == 1;
    } else if (n->type == GEN_DNS && dns.empty()) {
      dns.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(n->d.dNSName)),
                 static_cast<size_t>(ASN1_STRING_length(n->d.dNSName)));
    }
  }
  GENERAL_NAMES_free(names);
  if (dns.empty() && !loopback_ip) {
    char cn[256] = {0};
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn)) > 0) dns = cn;
  }
  X509_free(cert);
  return loopback_ip ? std::string() : dns;
}

}  // namespace ft::server::auth
