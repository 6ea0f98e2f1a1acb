#include "common/catalog/catalog.h"

#include "absl/strings/str_join.h"

namespace ft::catalog {

const std::vector<BackboneInfo>& Backbones() {
  static const auto* kBackbones = new std::vector<BackboneInfo>{
      // After the newest name, the names older torchvision releases gave the
      // same weights; those files are mostly in torch.save's legacy format.
      {"resnet18", {"stem", "layer1", "layer2", "layer3", "layer4"}, 512,
       {"resnet18-f37072fd.pth", "resnet18-5c106cde.pth"}},
      {"resnet34", {"stem", "layer1", "layer2", "layer3", "layer4"}, 512,
       {"resnet34-b627a593.pth", "resnet34-333f7ec4.pth"}},
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
      {"vgg11", {"block1", "block2", "block3", "block4", "block5", "classifier"}, 4096,
       {"vgg11-8a719046.pth", "vgg11-bbd30ac9.pth"}},
      {"vgg11_bn", {"block1", "block2", "block3", "block4", "block5", "classifier"}, 4096,
       {"vgg11_bn-6002323d.pth"}},
      {"vgg13", {"block1", "block2", "block3", "block4", "block5", "classifier"}, 4096,
       {"vgg13-19584684.pth", "vgg13-c768596a.pth"}},
      {"vgg13_bn", {"block1", "block2", "block3", "block4", "block5", "classifier"}, 4096,
       {"vgg13_bn-abd245e5.pth"}},
      {"vgg16", {"block1", "block2", "block3", "block4", "block5", "classifier"}, 4096,
       {"vgg16-397923af.pth"}},
      {"vgg16_bn", {"block1", "block2", "block3", "block4", "block5", "classifier"}, 4096,
       {"vgg16_bn-6c64b313.pth"}},
      {"vgg19", {"block1", "block2", "block3", "block4", "block5", "classifier"}, 4096,
       {"vgg19-dcbb9e9d.pth"}},
      {"vgg19_bn", {"block1", "block2", "block3", "block4", "block5", "classifier"}, 4096,
       {"vgg19_bn-c79401a0.pth"}},
      {"densenet121", {"stem", "block1", "block2", "block3", "block4"}, 1024, {"densenet121-a639ec97.pth"}},
      {"densenet169", {"stem", "block1", "block2", "block3", "block4"}, 1664, {"densenet169-b2777c0a.pth"}},
      {"inception_v3", {"stem", "mixed5", "mixed6", "mixed7"}, 2048,
       {"inception_v3_google-0cc3c7bd.pth", "inception_v3_google-1a9a5a14.pth"}},
      // MobileNet, EfficientNet, ConvNeXt: torchvision 0.14's DEFAULT file
      // first, then its other weights; for EfficientNet also the names later
      // torchvision releases gave the same IMAGENET1K_V1 weights.
      {"mobilenet_v2", {"stem", "stage1", "stage2", "stage3", "stage4", "final"}, 1280,
       {"mobilenet_v2-7ebf99e0.pth", "mobilenet_v2-b0353104.pth"}},
      {"mobilenet_v3_small", {"stem", "stage1", "stage2", "stage3", "stage4", "final"}, 1024,
       {"mobilenet_v3_small-047dcff4.pth"}},
      {"mobilenet_v3_large", {"stem", "stage1", "stage2", "stage3", "stage4", "final"}, 1280,
       {"mobilenet_v3_large-5c1a4163.pth", "mobilenet_v3_large-8738ca79.pth"}},
      {"efficientnet_b0", {"stem", "stage1", "stage2", "stage3", "stage4", "final"}, 1280,
       {"efficientnet_b0_rwightman-3dd342df.pth", "efficientnet_b0_rwightman-7f5810bc.pth"}},
      {"efficientnet_b1", {"stem", "stage1", "stage2", "stage3", "stage4", "final"}, 1280,
       {"efficientnet_b1-c27df63c.pth", "efficientnet_b1_rwightman-533bc792.pth",
        "efficientnet_b1_rwightman-bac287d4.pth"}},
      {"efficientnet_b2", {"stem", "stage1", "stage2", "stage3", "stage4", "final"}, 1408,
       {"efficientnet_b2_rwightman-bcdf34b7.pth", "efficientnet_b2_rwightman-c35c1473.pth"}},
      {"efficientnet_b3", {"stem", "stage1", "stage2", "stage3", "stage4", "final"}, 1536,
       {"efficientnet_b3_rwightman-cf984f9c.pth", "efficientnet_b3_rwightman-b3899882.pth"}},
      {"convnext_tiny", {"stem", "stage1", "stage2", "stage3", "stage4", "final"}, 768,
       {"convnext_tiny-983f1562.pth"}},
      {"convnext_small", {"stem", "stage1", "stage2", "stage3", "stage4", "final"}, 768,
       {"convnext_small-0c510722.pth"}},
      // FAMILY CATALOG (entries above this marker)
      {"torchscript", {}, 0, {}},
  };
  return *kBackbones;
}

bool IsTorchScriptBackbone(const std::string& name) { return name == "torchscript"; }

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
