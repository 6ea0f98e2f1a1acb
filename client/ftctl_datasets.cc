#include "client/ftctl_datasets.h"

#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/time_util.h"
#include "common/util/proto_json.h"
#include "common/datasets/archive.h"

namespace ft::client {
namespace {
namespace fs = std::filesystem;

constexpr int kExitOk = 0;

std::string Size(int64_t bytes) {
  if (bytes < (1 << 20)) return absl::StrFormat("%.1f KB", bytes / 1e3);
  return absl::StrFormat("%.1f MB", bytes / 1e6);
}

std::string Time(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0) return "-";
  return google::protobuf::util::TimeUtil::ToString(t).substr(0, 19) + "Z";
}

int Upload(const DatasetsCommandContext& ctx) {
  if (auto rc = ctx.check_flags({"name", "sha256", "format"})) return *rc;
  if (ctx.words.size() != 3) return ctx.refuse("datasets upload takes one DIR or ARCHIVE");
  auto name = ctx.flags.find("name");
  if (name == ctx.flags.end() || name->second.empty()) return ctx.refuse("datasets upload needs --name NAME");
  auto flag = [&](const std::string& f) {
    auto it = ctx.flags.find(f);
    return it == ctx.flags.end() ? std::string() : it->second;
  };
  const std::string source = ctx.words[2];
  std::error_code ec;
  std::string archive = source;
  std::string packed;
  if (fs::is_directory(source, ec)) {
    std::random_device rd;
    packed = (fs::temp_directory_path(ec) / absl::StrFormat("ftctl-%d-%08x.tar", ::getpid(), rd())).string();
    if (!ctx.json) std::cerr << "packing " << source << " ..." << std::endl;
    if (auto s = datasets::PackDirectory(source, packed); !s.ok()) {
      fs::remove(packed, ec);
      return ctx.refuse(std::string(s.message()));
    }
    archive = packed;
  } else if (!fs::is_regular_file(source, ec)) {
    return ctx.refuse(absl::StrCat(source, " is not a folder or an archive file"));
  }
  auto dataset = ctx.client->UploadDataset(archive, name->second, flag("sha256"), flag("format"));
  if (!packed.empty()) fs::remove(packed, ec);
  if (!dataset.ok()) return ctx.fail(dataset.status());
  if (ctx.json) {
    std::cout << util::ToJson(*dataset) << std::endl;
  } else {
    std::cout << absl::StrFormat("dataset   %s\nsha256    %s\nlayout    %s, %d classes, %d images\n"
                                 "archive   %s, %s (%s extracted)\n",
                                 dataset->name(), dataset->sha256(), dataset->format(), dataset->num_classes(),
                                 dataset->num_images(), dataset->archive_format(), Size(dataset->size_bytes()),
                                 Size(dataset->extracted_bytes()))
              << "use       --dataset dataset://" << dataset->name() << std::endl;
  }
  return kExitOk;
}

int List(const DatasetsCommandContext& ctx) {
  if (auto rc = ctx.check_flags({})) return *rc;
  if (ctx.words.size() != 2) return ctx.refuse("datasets list takes no arguments");
  auto datasets = ctx.client->ListDatasets();
  if (!datasets.ok()) return ctx.fail(datasets.status());
  if (ctx.json) {
    pb::ListDatasetsResponse resp;
    for (const auto& d : *datasets) *resp.add_datasets() = d;
    std::cout << util::ToJson(resp) << std::endl;
    return kExitOk;
  }
  std::cout << absl::StrFormat("%-24s %-14s %-12s %-8s %-8s %-10s %s\n", "NAME", "SHA256", "FORMAT", "CLASSES",
                               "IMAGES", "SIZE", "CREATED");
  for (const auto& d : *datasets) {
    std::cout << absl::StrFormat("%-24s %-14s %-12s %-8d %-8d %-10s %s\n", d.name(), d.sha256().substr(0, 12),
                                 d.format(), d.num_classes(), d.num_images(),
                                 Size(d.size_bytes()), Time(d.create_time()));
  }
  return kExitOk;
}

int Delete(const DatasetsCommandContext& ctx) {
  if (auto rc = ctx.check_flags({})) return *rc;
  if (ctx.words.size() != 3) return ctx.refuse("datasets delete takes one NAME");
  if (auto s = ctx.client->DeleteDataset(ctx.words[2]); !s.ok()) return ctx.fail(s);
  if (!ctx.json) std::cout << "deleted " << ctx.words[2] << std::endl;
  return kExitOk;
}

}  // namespace

int RunDatasetsCommand(const DatasetsCommandContext& ctx) {
  if (ctx.words.size() < 2) return ctx.refuse("datasets needs upload, list or delete");
  const std::string& sub = ctx.words[1];
  if (sub == "upload") return Upload(ctx);
  if (sub == "list") return List(ctx);
  if (sub == "delete") return Delete(ctx);
  return ctx.refuse(absl::StrCat("unknown datasets command '", sub, "' (upload, list, delete)"));
}

}  // namespace ft::client
