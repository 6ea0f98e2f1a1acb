// README.md, the model card that travels with every exported model: what
// it classifies, how well, what it was trained on and with, the exact
// preprocessing, and how to load it in PyTorch, onnxruntime and Triton.
#ifndef FT_WORKER_EXPORT_MODEL_CARD_H_
#define FT_WORKER_EXPORT_MODEL_CARD_H_

#include <string>

#include "worker/export/metadata.h"

namespace ft::worker {

// This project's version (CMake's PROJECT_VERSION), for SoftwareVersions.
const char* FinetunedVersion();

// The model card as Markdown: a pure function of `metadata` (its ONNX
// facts included: the ONNX sections appear when metadata.onnx holds an
// exported file, and "no model.onnx: <why>" otherwise). Every number in it
// is the one metadata.json holds.
std::string ModelCard(const ModelMetadata& metadata);

}  // namespace ft::worker

#endif  // FT_WORKER_EXPORT_MODEL_CARD_H_
