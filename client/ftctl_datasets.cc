// ftctl's dataset commands: datasets upload, get, list and delete.
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/ftctl_handlers.h"
#include "common/datasets/archive.h"
#include "common/util/proto_json.h"

namespace ft::client::ftctl {
namespace {
namespace fs = std::filesystem;

std::string Size(int64_t bytes) {
  if (bytes < (1 << 20)) return absl::StrFormat("%.1f KB", bytes / 1e3);
  return absl::StrFormat("%.1f MB", bytes / 1e6);
}

// "EXTRACTING", "READY", "FAILED".
std::string StateText(pb::DatasetState state) {
  const std::string name = pb::DatasetState_Name(state);
  return name.rfind("DATASET_", 0) == 0 ? name.substr(8) : name;
}

// One dataset, as JSON or as the lines upload and get print.
void PrintDataset(Invocation& inv, const pb::Dataset& dataset) {
  if (inv.json()) {
    std::cout << util::ToJson(dataset) << std::endl;
    return;
  }
  std::cout << absl::StrFormat("dataset   %s\ntenant    %s\nstate     %s\nsha256    %s\nlayout    %s, %d classes, %d images\n"
                               "archive   %s, %s (%s extracted)\ncreated   %s\n",
                               dataset.name(), dataset.tenant(), StateText(dataset.state()), dataset.sha256(),
                               dataset.format(), dataset.num_classes(), dataset.num_images(), dataset.archive_format(),
                               Size(dataset.size_bytes()), Size(dataset.extracted_bytes()),
                               TimeText(dataset.create_time()));
  if (dataset.state() == pb::DATASET_FAILED) std::cout << "failed    " << dataset.error() << "\n";
  std::cout << "use       --dataset dataset://" << dataset.name() << std::endl;
}

}  // namespace

int UploadDataset(Invocation& inv) {
  const std::string& source = inv.args()[0];
  std::error_code ec;
  std::string archive = source;
  std::string packed;
  if (fs::is_directory(source, ec)) {
    std::random_device rd;
    packed = (fs::temp_directory_path(ec) / absl::StrFormat("ftctl-%d-%08x.tar", ::getpid(), rd())).string();
    if (!inv.json()) std::cerr << "packing " << source << " ..." << std::endl;
    if (auto s = datasets::PackDirectory(source, packed); !s.ok()) {
      fs::remove(packed, ec);
      return inv.Refuse(s.message());
    }
    archive = packed;
  } else if (!fs::is_regular_file(source, ec)) {
    return inv.Refuse(absl::StrCat(source, " is not a folder or an archive file"));
  }
  auto dataset = inv.client().UploadDataset(archive, inv.Flag("name"), inv.Flag("sha256"), inv.Flag("format"));
  if (!packed.empty()) fs::remove(packed, ec);
  if (!dataset.ok()) return inv.Fail(dataset.status());
  PrintDataset(inv, *dataset);
  return kExitOk;
}

int ListDatasets(Invocation& inv) {
  auto datasets = inv.client().ListDatasets(inv.Flag("tenant"));
  if (!datasets.ok()) return inv.Fail(datasets.status());
  if (inv.PrintedAsJson(*datasets, &pb::ListDatasetsResponse::add_datasets)) return kExitOk;
  const bool tenants = inv.Has("tenant") || SpansTenants(*datasets);
  std::cout << TenantCell(tenants, "TENANT") << absl::StrFormat("%-24s %-11s %-14s %-12s %-8s %-8s %-10s %s\n", "NAME", "STATE", "SHA256", "FORMAT",
                               "CLASSES", "IMAGES", "SIZE", "CREATED");
  for (const auto& d : *datasets) {
    std::cout << TenantCell(tenants, d.tenant()) << absl::StrFormat("%-24s %-11s %-14s %-12s %-8d %-8d %-10s %s\n", d.name(), StateText(d.state()),
                                 d.sha256().substr(0, 12), d.format(), d.num_classes(), d.num_images(),
                                 Size(d.size_bytes()), TimeText(d.create_time()));
    if (d.state() == pb::DATASET_FAILED) std::cout << "  failed: " << d.error() << std::endl;
  }
  return kExitOk;
}

int GetDataset(Invocation& inv) {
  auto dataset = inv.client().GetDataset(inv.args()[0], inv.Flag("tenant"));
  if (!dataset.ok()) return inv.Fail(dataset.status());
  PrintDataset(inv, *dataset);
  return kExitOk;
}

int DeleteDataset(Invocation& inv) {
  return inv.Deleted(inv.client().DeleteDataset(inv.args()[0], inv.Flag("tenant")), inv.args()[0]);
}

}  // namespace ft::client::ftctl
