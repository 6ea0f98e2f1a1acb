#ifndef FT_COMMON_UTIL_PROTO_JSON_H_
#define FT_COMMON_UTIL_PROTO_JSON_H_

#include <string>

#include "absl/status/statusor.h"
#include "google/protobuf/message.h"

namespace ft::util {

// The protobuf JSON mapping with proto field names (snake_case), enum names
// as strings, on one line. This is the format of `ftctl --output json`.
std::string ToJson(const google::protobuf::Message& message);
absl::Status FromJson(const std::string& json, google::protobuf::Message* message);

}  // namespace ft::util

#endif  // FT_COMMON_UTIL_PROTO_JSON_H_
