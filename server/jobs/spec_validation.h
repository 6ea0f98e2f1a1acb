// Job-spec validation: every field's range and the combinations that make
// no sense, with the defaults applied, so that what is stored and shown is
// what runs. Knows nothing of files, datasets or stores (Resolve does that).
#ifndef FT_SERVER_JOBS_SPEC_VALIDATION_H_
#define FT_SERVER_JOBS_SPEC_VALIDATION_H_

#include "absl/status/status.h"
#include "common/catalog/catalog.h"
#include "finetune/v1/finetune.pb.h"

namespace ft::server {

namespace pb = ::finetune::v1;

// Checks `spec` and fills in its defaults. INVALID_ARGUMENT whose message
// starts with the field's name ("epochs: must be between 1 and 10000, got
// -3"). On success `*backbone` is the catalog entry of spec->backbone().
absl::Status ValidateSpec(pb::JobSpec* spec, const catalog::BackboneInfo** backbone);

}  // namespace ft::server

#endif  // FT_SERVER_JOBS_SPEC_VALIDATION_H_
