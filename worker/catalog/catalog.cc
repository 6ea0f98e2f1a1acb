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
      {"resnet101", {"stem", "layer1", "layer2", "layer3", "layer4"}, 2048,
       {"resnet101-cd907fc2.pth", "resnet101-63fe2227.pth", "resnet101-5d3b4d8f.pth"}},
      {"resnet152", {"stem", "layer1", "layer2", "layer3", "layer4"}, 2048,
       {"resnet152-f82ba261.pth", "resnet152-394f9c45.pth", "resnet152-b121ed2d.pth"}},
      {"resnext50_32x4d", {"stem", "layer1", "layer2", "layer3", "layer4"}, 2048,
       {"resnext50_32x4d-1a0047aa.pth", "resnext50_32x4d-7cdf4587.pth"}},
      {"wide_resnet50_2", {"stem", "layer1", "layer2", "layer3", "layer4"}, 2048,
       {"wide_resnet50_2-9ba9bcbe.pth", "wide_resnet50_2-95faca4d.pth"}},
      // FAMILY CATALOG (entries above this marker)
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
