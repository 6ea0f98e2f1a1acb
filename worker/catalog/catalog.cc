#include "worker/catalog/catalog.h"

#include "absl/strings/str_join.h"

namespace ft::catalog {

const std::vector<BackboneInfo>& Backbones() {
  static const auto* kBackbones = new std::vector<BackboneInfo>{
      {"resnet18", {"stem", "layer1", "layer2", "layer3", "layer4"}, 512, {"resnet18-f37072fd.pth"}},
      {"resnet34", {"stem", "layer1", "layer2", "layer3", "layer4"}, 512, {"resnet34-b627a593.pth"}},
      {"resnet50",
       {"stem", "layer1", "layer2", "layer3", "layer4"},
       2048,
       {"resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth", "resnet50-19c8e357.pth"}},
  };
  return *kBackbones;
}

const BackboneInfo* FindBackbone(const std::string& name) {
  for (const auto& b : Backbones()) {
    if (b.name == name) return &b;
  }
  return nullptr;
}

std::string BackboneNames() {
  std::vector<std::string> names;
  for (const auto& b : Backbones()) names.push_back(b.name);
  return absl::StrJoin(names, ", ");
}

}  // namespace ft::catalog
