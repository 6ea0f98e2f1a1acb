#ifndef FT_COMMON_CATALOG_CATALOG_H_
#define FT_COMMON_CATALOG_CATALOG_H_

#include <string>
#include <vector>

namespace ft::catalog {

// What the service knows of a backbone without LibTorch: the server
// validates submissions against this, the worker builds from it.
struct BackboneInfo {
  std::string name;
  // Stages counted by freeze_depth, from the input. freeze_depth N freezes
  // the first N of them; -1 ("all") freezes every one.
  std::vector<std::string> stages;
  // Width of the pooled features that the new head takes.
  int feature_dim = 0;
  // torchvision's file names for the default weights, newest first.
  std::vector<std::string> pretrained_files;
};

const std::vector<BackboneInfo>& Backbones();
// "torchscript": the backbone is the TorchScript file given as weights; its
// stages (its top-level children) are only known to the worker.
bool IsTorchScriptBackbone(const std::string& name);
// nullptr when unknown.
const BackboneInfo* FindBackbone(const std::string& name);
// "resnet18, resnet34, ..." for error messages.
std::string BackboneNames();

}  // namespace ft::catalog

#endif  // FT_COMMON_CATALOG_CATALOG_H_
