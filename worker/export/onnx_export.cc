#include "worker/export/onnx_export.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <onnx/onnx_pb.h>  // onnx-ml.pb.h, with ONNX_API defined
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/common_subexpression_elimination.h>
#include <torch/csrc/jit/passes/constant_pooling.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/frozen_graph_optimizations.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/remove_mutation.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/util/files.h"
#include "common/util/status.h"

namespace ft::worker {
namespace {

using c10::IValue;
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

// ONNX 1.12 (Debian's libonnx-dev), which brought opset 17, writes IR 8.
constexpr int64_t kIrVersion = 8;
// The frozen graph runs on two batch sizes: whatever differs between the
// two runs depends on N, everything else is fixed for the file.
constexpr int64_t kProbeBatch[2] = {2, 3};
constexpr char kBatchDim[] = "N";
constexpr double kPi = 3.14159265358979323846;

std::string Prefix() { return "model.onnx not written: "; }

absl::Status Unmapped(absl::string_view what) {
  return absl::UnimplementedError(absl::StrCat(Prefix(), "no ONNX mapping for ", what));
}

bool HasCalls(const torch::jit::Block& block) {
  for (const Node* node : block.nodes()) {
    if (node->kind() == c10::prim::CallMethod || node->kind() == c10::prim::CallFunction) return true;
    for (const torch::jit::Block* sub : node->blocks()) {
      if (HasCalls(*sub)) return true;
    }
  }
  return false;
}

// forward(x) -> (classifier.forward(x), classifier.features(x)), frozen.
// Both methods run the same backbone on the same input: freezing's common
// subexpression elimination leaves one copy of it, which both outputs share.
torch::jit::Module FreezeBoth(const torch::jit::Module& classifier) {
  torch::jit::Module wrapper("__torch__.ft.OnnxExport", std::make_shared<torch::jit::CompilationUnit>(),
                             /*shouldMangle=*/true);
  wrapper.register_attribute("training", c10::BoolType::get(), false);
  // Freezing rewrites the class types of what it freezes, so the copy gets
  // types of its own. Its tensors stay shared (clone in place): they are only
  // read, by freezing (which folds into new tensors) and by ops that do not
  // mutate (the probe runs no in-place op), and a copy of VGG's would cost
  // half a gigabyte. A model on a GPU is copied to the CPU, where the probe
  // runs (Module::to moves tensors in place, so never on shared ones).
  bool on_cpu = true;
  for (const at::Tensor& t : classifier.parameters()) on_cpu &= t.device().is_cpu();
  for (const at::Tensor& t : classifier.buffers()) on_cpu &= t.device().is_cpu();
  torch::jit::Module copy = classifier.clone(/*inplace=*/on_cpu);
  if (!on_cpu) copy.to(at::kCPU);
  wrapper.register_module("model", copy);
  wrapper.define("def forward(self, x):\n    return (self.model.forward(x), self.model.features(x))\n");
  wrapper.eval();
  // freeze() inlines calls only in the graph executor's optimising mode,
  // which the worker turns off; one Inline pass inlines one level of calls.
  auto graph = wrapper.get_method("forward").graph();
  for (int level = 0; level < 64 && HasCalls(*graph->block()); ++level) torch::jit::Inline(*graph);
  return torch::jit::freeze(wrapper);
}

// The values of one run of the graph, by value.
using Env = std::unordered_map<const Value*, IValue>;

// Runs one node (without blocks) with LibTorch's own operator.
void EvaluateNode(const Node* node, Env* env) {
  const auto in = [&](size_t i) -> const IValue& { return env->at(node->inputs()[i]); };
  switch (node->kind()) {
    case c10::prim::Constant:
      (*env)[node->output()] = *torch::jit::toIValue(node->output());
      break;
    case c10::prim::ListConstruct: {
      c10::impl::GenericList list(node->output()->type()->expectRef<c10::ListType>().getElementType());
      for (size_t i = 0; i < node->inputs().size(); ++i) list.push_back(in(i));
      (*env)[node->output()] = IValue(std::move(list));
      break;
    }
    case c10::prim::TupleConstruct: {
      std::vector<IValue> elements;
      for (size_t i = 0; i < node->inputs().size(); ++i) elements.push_back(in(i));
      (*env)[node->output()] = c10::ivalue::Tuple::create(std::move(elements));
      break;
    }
    case c10::prim::ListUnpack: {
      const auto list = in(0).toListRef();
      TORCH_CHECK(list.size() == node->outputs().size(), "prim::ListUnpack of ", list.size(), " values into ",
                  node->outputs().size());
      for (size_t i = 0; i < list.size(); ++i) (*env)[node->outputs()[i]] = list[i];
      break;
    }
    case c10::prim::TupleUnpack: {
      const auto& elements = in(0).toTupleRef().elements();
      for (size_t i = 0; i < elements.size(); ++i) (*env)[node->outputs()[i]] = elements[i];
      break;
    }
    default: {
      torch::jit::Stack stack;
      for (size_t i = 0; i < node->inputs().size(); ++i) stack.push_back(in(i));
      node->getOperation()(stack);
      TORCH_CHECK(stack.size() == node->outputs().size(), node->kind().toQualString(), " returned ", stack.size(),
                  " values, not ", node->outputs().size());
      for (size_t i = 0; i < stack.size(); ++i) (*env)[node->outputs()[i]] = std::move(stack[i]);
    }
  }
}
// A tensor, or a list, tuple or optional holding one.
bool IsTensorType(const c10::TypePtr& type) {
  if (type->kind() == c10::TypeKind::TensorType) return true;
  for (const c10::TypePtr& contained : type->containedTypes()) {
    if (IsTensorType(contained)) return true;
  }
  return false;
}

bool IsEvaluable(const Node* node) {
  switch (node->kind()) {
    case c10::prim::Constant:
    case c10::prim::ListConstruct:
    case c10::prim::TupleConstruct:
    case c10::prim::ListUnpack:
    case c10::prim::TupleUnpack:
      return true;
    default:
      return node->maybeOperator() != nullptr;
  }
}

std::string OpName(const Node* node) { return node->kind().toQualString(); }

// The frozen graph, run on two batch sizes in lockstep, and what the runs
// say about its values:
//  - dynamic: computed from the input;
//  - batch_dependent: a non-tensor value (an int, a list) that depends on N
//    (x.size(0), and anything computed from it);
//  - data_dependent: a non-tensor value read from a tensor's contents
//    (x.sum().item()), or from an op whose kind the probe does not know.
// The rest is fixed for the file (its H and W), and becomes attributes.
struct Probe {
  Env runs[2];
  std::unordered_set<const Value*> dynamic;
  std::unordered_set<const Value*> batch_dependent;
  std::unordered_set<const Value*> data_dependent;
};

// Shape questions about a tensor, whose answers do not depend on its values.
bool AsksTheShape(const Node* node) {
  return node->kind() == c10::aten::dim || node->kind() == c10::aten::size || node->kind() == c10::prim::dtype ||
         node->kind() == c10::prim::device || node->kind() == c10::aten::len;
}

void Classify(const Node* node, Probe* p) {
  bool dynamic = false, batch = false, data = false, reads_tensor = false;
  for (const Value* v : node->inputs()) {
    if (!p->dynamic.count(v)) continue;
    dynamic = true;
    if (IsTensorType(v->type())) reads_tensor = true;
    batch |= p->batch_dependent.count(v) > 0;
    data |= p->data_dependent.count(v) > 0;
  }
  if (!dynamic) return;
  for (const Value* out : node->outputs()) {
    p->dynamic.insert(out);
    if (IsTensorType(out->type())) continue;
    if (reads_tensor && !AsksTheShape(node)) data = true;
    // What differs between the runs depends on N; x.size(1) does not. The
    // length of x.size() or of a list literal is fixed, whatever they hold.
    const bool differs = !(p->runs[0].at(out) == p->runs[1].at(out));
    bool batch_out = batch || differs;
    if (node->kind() == c10::aten::len) {
      const Node* list = node->inputs()[0]->node();
      batch_out = differs || (batch && list->kind() != c10::aten::size && list->kind() != c10::prim::ListConstruct);
    }
    if (batch_out) p->batch_dependent.insert(out);
    if (data) p->data_dependent.insert(out);
  }
}

// Once every user of a computed tensor has run, only its shape and dtype
// are needed: a meta tensor keeps those, and the activations of a 224 px
// probe are not all held at once.
IValue ShapeOnly(const IValue& v) {
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    return at::empty(t.sizes(), at::TensorOptions().dtype(t.scalar_type()).device(at::kMeta));
  }
  if (v.isList()) {
    c10::impl::GenericList list(v.toList().elementType());
    for (const IValue& e : v.toListRef()) list.push_back(ShapeOnly(e));
    return IValue(std::move(list));
  }
  return v;
}

void ReleaseFinished(const Node* node, const std::unordered_set<const Node*>& done, Probe* p) {
  for (const Value* v : node->inputs()) {
    if (!p->dynamic.count(v) || !IsTensorType(v->type())) continue;
    const auto& uses = v->uses();
    if (!std::all_of(uses.begin(), uses.end(), [&](const torch::jit::Use& u) { return done.count(u.user) > 0; })) {
      continue;
    }
    for (Env& env : p->runs) env[v] = ShapeOnly(env.at(v));
  }
}

// Replaces a prim::If by the nodes of the branch it takes.
void InlineBranch(Node* if_node, bool condition) {
  torch::jit::Block* block = if_node->blocks()[condition ? 0 : 1];
  for (auto it = block->nodes().begin(); it != block->nodes().end();) {
    Node* n = *it;
    ++it;
    n->moveBefore(if_node);
  }
  for (size_t i = 0; i < if_node->outputs().size(); ++i) {
    if_node->outputs()[i]->replaceAllUsesWith(block->outputs()[i]);
  }
  if_node->destroy();
}

// Runs `graph` on x[0] and x[1] node by node. A prim::If whose condition is
// a fixed shape fact (a scripted BatchNorm's `if input.dim() != 4: raise`)
// is replaced by the branch it takes, which is then run; one that asks about
// N or the data, other control flow, and nodes it cannot run stop the probe
// there (false), to be reported as unmapped. Counts the branches it takes.
bool RunProbe(Graph& graph, const IValue& self, const at::Tensor x[2], Probe* p, int* branches) {
  torch::NoGradGuard no_grad;
  for (int r = 0; r < 2; ++r) {
    p->runs[r][graph.inputs()[0]] = self;
    p->runs[r][graph.inputs()[1]] = x[r];
  }
  p->dynamic.insert(graph.inputs()[1]);
  std::unordered_set<const Node*> done;
  for (Node* node = graph.block()->nodes().front(); node != graph.block()->return_node();) {
    if (node->kind() == c10::prim::If) {
      const Value* condition = node->inputs()[0];
      if (p->batch_dependent.count(condition) || p->data_dependent.count(condition)) return false;
      Node* before = node->prev();
      InlineBranch(node, p->runs[0].at(condition).toBool());
      ++*branches;
      node = before->next();
      continue;
    }
    const bool in_place = node->maybeSchema() != nullptr && node->schema().is_mutable();
    if (!node->blocks().empty() || in_place || !IsEvaluable(node)) return false;
    for (int r = 0; r < 2; ++r) EvaluateNode(node, &p->runs[r]);
    Classify(node, p);
    done.insert(node);
    ReleaseFinished(node, done, p);
    node = node->next();
  }
  return true;
}

class Converter;
using Handler = absl::Status (Converter::*)(const Node*);
const std::map<std::string, Handler>& Handlers();

// Writes the ONNX graph for the frozen graph, node by node. Values that
// depend on the input (the probe's `dynamic`) become ONNX values; tensors
// that do not become initializers; everything else (ints, lists, flags) is
// read from the runs, and must not depend on N or the data: such an
// argument has no fixed ONNX attribute.
class Converter {
 public:
  Converter(const Graph& graph, const Probe& probe) : graph_(graph), probe_(probe) {}

  absl::StatusOr<onnx::ModelProto> Convert() {
    onnx::ModelProto model;
    model.set_ir_version(kIrVersion);
    model.set_producer_name("finetuned");
    model.set_producer_version(kOnnxConverterVersion);
    model.set_doc_string(
        "A finetuned classifier: input float32 [N,3,H,W] normalised as metadata.json says; "
        "logits = forward(x), features = features(x) of model.pt");
    onnx::OperatorSetIdProto* opset = model.add_opset_import();
    opset->set_domain("");
    opset->set_version(kOnnxOpset);
    graph_proto_ = model.mutable_graph();
    graph_proto_->set_name("FineTunedClassifier");

    const Value* x = graph_.inputs()[1];
    names_[x] = "input";
    used_names_.insert("input");
    AddValueInfo(graph_proto_->add_input(), "input", x);

    for (const Node* node : graph_.nodes()) {
      if (!NeedsOnnx(node)) continue;
      const auto handler = Handlers().find(OpName(node));
      if (handler == Handlers().end()) return Unmapped(OpName(node));
      FT_RETURN_IF_ERROR(CheckArguments(node));
      FT_RETURN_IF_ERROR((this->*(handler->second))(node));
      for (const Value* out : node->outputs()) {
        if (!IsDynamic(out) || !out->hasUses() || !A(out).isTensor()) continue;
        if (A(out).toTensor().scalar_type() != at::kFloat) {
          return Unmapped(absl::StrCat(OpName(node), " returning ", c10::toString(A(out).toTensor().scalar_type()),
                                       " (only float32 is mapped)"));
        }
      }
    }

    FT_ASSIGN_OR_RETURN(std::vector<const Value*> outputs, GraphOutputs());
    const char* kOutputNames[2] = {"logits", "features"};
    for (size_t i = 0; i < 2; ++i) {
      FT_ASSIGN_OR_RETURN(std::string name, In(outputs[i]));
      AddNode("Identity", {name}, {kOutputNames[i]});
      AddValueInfo(graph_proto_->add_output(), kOutputNames[i], outputs[i]);
    }
    return model;
  }

  // The handlers, one per aten op (Handlers() lists them).
  absl::Status Conv2d(const Node* n);
  absl::Status Convolution(const Node* n);
  absl::Status Conv(const Node* n, size_t groups_arg);
  absl::Status BatchNorm(const Node* n);
  absl::Status LayerNorm(const Node* n);
  absl::Status Unary(const Node* n);
  absl::Status Identity(const Node* n);
  absl::Status Dropout(const Node* n);
  absl::Status HardSigmoid(const Node* n);
  absl::Status Silu(const Node* n);
  absl::Status Gelu(const Node* n);
  absl::Status Clamp(const Node* n);
  absl::Status LeakyRelu(const Node* n);
  absl::Status Softmax(const Node* n);
  absl::Status MaxPool2d(const Node* n);
  absl::Status AvgPool2d(const Node* n);
  absl::Status AdaptiveAvgPool2d(const Node* n);
  absl::Status AdaptiveMaxPool2d(const Node* n);
  absl::Status Reshape(const Node* n);
  absl::Status Linear(const Node* n);
  absl::Status Addmm(const Node* n);
  absl::Status Matmul(const Node* n);
  absl::Status Binary(const Node* n);
  absl::Status Cat(const Node* n);
  absl::Status Permute(const Node* n);
  absl::Status Transpose(const Node* n);
  absl::Status Mean(const Node* n);
  absl::Status Sum(const Node* n);
  absl::Status Select(const Node* n);
  absl::Status Slice(const Node* n);

 private:
  const IValue& A(const Value* v) const { return probe_.runs[0].at(v); }
  const IValue& B(const Value* v) const { return probe_.runs[1].at(v); }
  bool IsDynamic(const Value* v) const { return probe_.dynamic.count(v) > 0; }

  // Whether `node` needs ONNX nodes: it computes tensors from the input.
  // Lists of tensors (for aten::cat) are read by their users.
  bool NeedsOnnx(const Node* node) const {
    if (node->kind() == c10::prim::ListConstruct || node->kind() == c10::prim::TupleConstruct) return false;
    for (const Value* out : node->outputs()) {
      if (IsDynamic(out) && IsTensorType(out->type())) return true;
    }
    return false;
  }

  absl::StatusOr<std::vector<const Value*>> GraphOutputs() const {
    std::vector<const Value*> outputs(graph_.outputs().begin(), graph_.outputs().end());
    if (outputs.size() == 1 && outputs[0]->node()->kind() == c10::prim::TupleConstruct) {
      const auto inputs = outputs[0]->node()->inputs();
      outputs.assign(inputs.begin(), inputs.end());
    }
    if (outputs.size() != 2) {
      return absl::FailedPreconditionError(
          absl::StrCat(Prefix(), "the frozen graph returns ", outputs.size(), " values, not (logits, features)"));
    }
    for (const Value* out : outputs) {
      if (!IsDynamic(out) || !A(out).isTensor() || A(out).toTensor().scalar_type() != at::kFloat) {
        return absl::FailedPreconditionError(
            absl::StrCat(Prefix(), "forward and features must return float32 tensors computed from the input"));
      }
    }
    return outputs;
  }

  // Some handlers read shapes from the runs rather than their arguments:
  // no argument may depend on the data, and only a reshape's may depend on
  // N (its one batch-dependent dim becomes -1).
  absl::Status CheckArguments(const Node* n) const {
    static const auto* kReshapes = new std::set<c10::Symbol>{c10::aten::flatten, c10::aten::view, c10::aten::reshape,
                                                             c10::aten::squeeze, c10::aten::unsqueeze};
    for (size_t i = 0; i < n->inputs().size(); ++i) {
      const Value* v = n->inputs()[i];
      if (probe_.data_dependent.count(v)) {
        return Unmapped(absl::StrCat(OpName(n), " whose argument ", i, " depends on the input's values"));
      }
      if (probe_.batch_dependent.count(v) && !kReshapes->count(n->kind())) {
        return Unmapped(absl::StrCat(OpName(n), " whose argument ", i, " depends on the batch size"));
      }
    }
    return absl::OkStatus();
  }

  // A value that is the same in both runs (UNIMPLEMENTED naming the op when
  // it depends on the batch size or the data).
  absl::StatusOr<IValue> Static(const Node* n, size_t i) const {
    const Value* v = n->inputs()[i];
    const IValue& a = A(v);
    if (!IsDynamic(v)) return a;
    if (a.isTensor()) return Unmapped(absl::StrCat(OpName(n), " with a computed tensor as argument ", i));
    if (probe_.batch_dependent.count(v) || !(a == B(v))) {
      return Unmapped(absl::StrCat(OpName(n), " whose argument ", i, " depends on the batch size"));
    }
    if (probe_.data_dependent.count(v)) {
      return Unmapped(absl::StrCat(OpName(n), " whose argument ", i, " depends on the input's values"));
    }
    return a;
  }
  absl::StatusOr<int64_t> Int(const Node* n, size_t i) const {
    FT_ASSIGN_OR_RETURN(IValue v, Static(n, i));
    if (!v.isInt()) return Unmapped(absl::StrCat(OpName(n), " with a non-int argument ", i));
    return v.toInt();
  }
  absl::StatusOr<double> Double(const Node* n, size_t i) const {
    FT_ASSIGN_OR_RETURN(IValue v, Static(n, i));
    if (v.isDouble()) return v.toDouble();
    if (v.isInt()) return static_cast<double>(v.toInt());
    return Unmapped(absl::StrCat(OpName(n), " with a non-number argument ", i));
  }
  absl::StatusOr<bool> Bool(const Node* n, size_t i) const {
    FT_ASSIGN_OR_RETURN(IValue v, Static(n, i));
    if (!v.isBool()) return Unmapped(absl::StrCat(OpName(n), " with a non-bool argument ", i));
    return v.toBool();
  }
  absl::StatusOr<bool> IsNone(const Node* n, size_t i) const {
    FT_ASSIGN_OR_RETURN(IValue v, Static(n, i));
    return v.isNone();
  }
  absl::StatusOr<std::vector<int64_t>> Ints(const Node* n, size_t i) const {
    FT_ASSIGN_OR_RETURN(IValue v, Static(n, i));
    if (v.isInt()) return std::vector<int64_t>{v.toInt()};
    if (!v.isIntList()) return Unmapped(absl::StrCat(OpName(n), " with a non-int-list argument ", i));
    return v.toIntVector();
  }
  // An int list of `size` entries; one entry stands for all (int[2] = 3).
  absl::StatusOr<std::vector<int64_t>> IntsOf(const Node* n, size_t i, size_t size) const {
    FT_ASSIGN_OR_RETURN(std::vector<int64_t> v, Ints(n, i));
    if (v.size() == 1) v.assign(size, v[0]);
    if (v.size() != size) {
      return Unmapped(absl::StrCat(OpName(n), " with ", v.size(), " values in argument ", i, ", not ", size));
    }
    return v;
  }

  std::vector<int64_t> Sizes(const Value* v, int run = 0) const {
    return (run == 0 ? A(v) : B(v)).toTensor().sizes().vec();
  }
  int64_t Rank(const Value* v) const { return A(v).toTensor().dim(); }
  static int64_t Axis(int64_t dim, int64_t rank) { return dim < 0 ? dim + rank : dim; }

  // The ONNX name of a tensor argument: a dynamic value's, or an
  // initializer with a constant's value (as float32 when it is floating).
  absl::StatusOr<std::string> In(const Value* v) {
    auto it = names_.find(v);
    if (it != names_.end()) return it->second;
    if (IsDynamic(v)) {
      return absl::InternalError(absl::StrCat(Prefix(), "value %", v->debugName(), " is used before it is made"));
    }
    const IValue& a = A(v);
    if (a.isDouble() || a.isInt()) return FloatScalar(a.isDouble() ? a.toDouble() : static_cast<double>(a.toInt()));
    if (!a.isTensor()) {
      return Unmapped(absl::StrCat("a ", a.tagKind(), " constant (%", v->debugName(), ") used as a tensor"));
    }
    return Initializer(a.toTensor(), InitializerName(v));
  }

  // A constant's name: freezing names them after the attribute they came
  // from ("self.model.backbone.conv1.weight_fused_bn"); a folded bias gets
  // a number, and the name of its convolution's weight instead.
  std::string InitializerName(const Value* v) const {
    std::string name = v->debugName();
    for (const char* prefix : {"self.model.", "self."}) {
      if (absl::StartsWith(name, prefix)) {
        name = name.substr(std::string(prefix).size());
        break;
      }
    }
    const Node* user = v->uses().empty() ? nullptr : v->uses()[0].user;
    if (!name.empty() && absl::ascii_isdigit(static_cast<unsigned char>(name[0])) && user != nullptr &&
        user->inputs().size() > 2 && user->inputs()[2] == v &&
        (user->kind() == c10::aten::conv2d || user->kind() == c10::aten::linear)) {
      return InitializerName(user->inputs()[1]) + ".bias";
    }
    return name;
  }
  // The name of argument i of n; for numbers (an aten::add's Scalar) a
  // float32 scalar.
  absl::StatusOr<std::string> In(const Node* n, size_t i) { return In(n->inputs()[i]); }

  std::string Out(const Value* v) {
    std::string name = Fresh(v->debugName());
    names_[v] = name;
    return name;
  }

  std::string Fresh(const std::string& hint) {
    std::string base = hint.empty() ? "t" : hint;
    std::string name = base;
    for (int k = 1; used_names_.count(name); ++k) name = absl::StrCat(base, "_", k);
    used_names_.insert(name);
    return name;
  }

  // A constant tensor argument, as float32: every mapped op computes in
  // float32, as PyTorch promotes an integer tensor against a float one.
  absl::StatusOr<std::string> Initializer(const at::Tensor& tensor, const std::string& hint) {
    if (!at::isFloatingType(tensor.scalar_type()) && !at::isIntegralType(tensor.scalar_type(), /*includeBool=*/false)) {
      return Unmapped(absl::StrCat("a ", c10::toString(tensor.scalar_type()), " constant"));
    }
    const at::Tensor t = tensor.detach().to(at::kCPU, at::kFloat);
    // The same tensor used twice is stored once.
    const auto key = std::make_pair(tensor.unsafeGetTensorImpl(), tensor.scalar_type());
    auto it = initializers_.find(key);
    if (it != initializers_.end()) return it->second;
    const std::string name = Fresh(hint.empty() ? "const" : hint);
    AddTensor(t, name);
    initializers_[key] = name;
    kept_.push_back(tensor);  // so that its TensorImpl* is never reused as a key
    return name;
  }

  void AddTensor(const at::Tensor& tensor, const std::string& name) {
    const at::Tensor t = tensor.contiguous();
    onnx::TensorProto* p = graph_proto_->add_initializer();
    p->set_name(name);
    for (int64_t d : t.sizes()) p->add_dims(d);
    p->set_data_type(t.scalar_type() == at::kFloat ? onnx::TensorProto::FLOAT : onnx::TensorProto::INT64);
    p->set_raw_data(t.data_ptr(), t.nbytes());
  }

  std::string FloatScalar(double v) {
    const std::string name = Fresh("scalar");
    AddTensor(torch::tensor(static_cast<float>(v)), name);
    return name;
  }
  std::string FloatTensor(const at::Tensor& t, const std::string& hint) {
    const std::string name = Fresh(hint);
    AddTensor(t.to(at::kFloat), name);
    return name;
  }
  std::string Int64s(const std::vector<int64_t>& v, const std::string& hint) {
    const std::string name = Fresh(hint);
    AddTensor(torch::tensor(v, torch::kLong), name);
    return name;
  }
  std::string Int64Scalar(int64_t v, const std::string& hint) {
    const std::string name = Fresh(hint);
    AddTensor(torch::tensor(v, torch::kLong), name);
    return name;
  }

  onnx::NodeProto* AddNode(const std::string& op, const std::vector<std::string>& inputs,
                           const std::vector<std::string>& outputs) {
    onnx::NodeProto* node = graph_proto_->add_node();
    node->set_op_type(op);
    node->set_name(Fresh(absl::StrCat(op, "_", graph_proto_->node_size())));
    for (const auto& i : inputs) node->add_input(i);
    for (const auto& o : outputs) node->add_output(o);
    return node;
  }
  // A node with one output, a fresh intermediate name.
  std::string AddTemp(const std::string& op, const std::vector<std::string>& inputs, onnx::NodeProto** node = nullptr) {
    const std::string out = Fresh(absl::StrCat(op, "_out"));
    onnx::NodeProto* p = AddNode(op, inputs, {out});
    if (node) *node = p;
    return out;
  }

  static void IntsAttr(onnx::NodeProto* node, const std::string& name, const std::vector<int64_t>& v) {
    onnx::AttributeProto* a = node->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t x : v) a->add_ints(x);
  }
  static void IntAttr(onnx::NodeProto* node, const std::string& name, int64_t v) {
    onnx::AttributeProto* a = node->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  }
  static void FloatAttr(onnx::NodeProto* node, const std::string& name, double v) {
    onnx::AttributeProto* a = node->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(static_cast<float>(v));
  }
  static void StringAttr(onnx::NodeProto* node, const std::string& name, const std::string& v) {
    onnx::AttributeProto* a = node->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::STRING);
    a->set_s(v);
  }

  // Shapes for the graph's input and outputs: the dims that differ between
  // the two runs are the batch dim N, the others are fixed.
  void AddValueInfo(onnx::ValueInfoProto* info, const std::string& name, const Value* v) const {
    info->set_name(name);
    onnx::TypeProto_Tensor* t = info->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    const auto a = Sizes(v, 0), b = Sizes(v, 1);
    for (size_t d = 0; d < a.size(); ++d) {
      onnx::TensorShapeProto_Dimension* dim = t->mutable_shape()->add_dim();
      if (a[d] != b[d]) {
        dim->set_dim_param(kBatchDim);
      } else {
        dim->set_dim_value(a[d]);
      }
    }
  }

  // The pads and ceil_mode of a pooling node: PyTorch's ceil_mode output
  // size, made with explicit trailing pads where ONNX's formula differs.
  struct PoolPads {
    std::vector<int64_t> pads;  // begin h, w, end h, w
    bool ceil_mode = false;
  };
  // A pooling node's stride (input 2): its kernel when the list is empty.
  absl::StatusOr<std::vector<int64_t>> PoolStride(const Node* n, const std::vector<int64_t>& kernel) const {
    FT_ASSIGN_OR_RETURN(std::vector<int64_t> stride, Ints(n, 2));
    if (stride.empty()) return kernel;
    return IntsOf(n, 2, 2);
  }
  absl::StatusOr<PoolPads> Pads(const Node* n, const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                                const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation, bool ceil,
                                bool extra_pads_are_safe) const {
    const auto in = Sizes(n->inputs()[0]);
    const auto out = Sizes(n->outputs()[0]);
    const size_t r = in.size();
    PoolPads p;
    p.pads = {padding[0], padding[1], padding[0], padding[1]};
    for (size_t d = 0; d < 2; ++d) {
      const int64_t span = in[r - 2 + d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1;
      const int64_t floor_out = span / stride[d] + 1;
      const int64_t want = out[r - 2 + d];
      if (want == floor_out) continue;
      if (!ceil || want != floor_out + 1) {
        return Unmapped(absl::StrCat(OpName(n), " with an output size ONNX's pooling formula does not give"));
      }
      if (!extra_pads_are_safe) {
        return Unmapped(absl::StrCat(OpName(n), " with ceil_mode and count_include_pad where the last window "
                                     "overhangs the padding"));
      }
      // One more window: pad the end so that it fits (padded cells are not
      // part of any max, nor counted by an average without the pad).
      p.pads[2 + d] += (want - 1) * stride[d] + dilation[d] * (kernel[d] - 1) + 1 - (in[r - 2 + d] + 2 * padding[d]);
      if (p.pads[2 + d] >= kernel[d]) {
        return Unmapped(absl::StrCat(OpName(n), " with ceil_mode padding as large as its kernel"));
      }
    }
    return p;
  }

  // y = Reshape(x) to the shape of `out` in the runs, the batch dim as -1.
  absl::Status ReshapeTo(const Node* n, const std::string& x, const Value* out) {
    const auto a = Sizes(out, 0), b = Sizes(out, 1);
    std::vector<int64_t> shape = a;
    int varying = 0;
    for (size_t d = 0; d < a.size(); ++d) {
      if (a[d] != b[d]) {
        shape[d] = -1;
        ++varying;
      } else if (a[d] == 0) {
        return Unmapped(absl::StrCat(OpName(n), " to an empty shape"));
      }
    }
    if (varying > 1) return Unmapped(absl::StrCat(OpName(n), " to a shape with ", varying, " batch-dependent dims"));
    AddNode("Reshape", {x, Int64s(shape, "shape")}, {Out(out)});
    return absl::OkStatus();
  }

  const Graph& graph_;
  const Probe& probe_;
  onnx::GraphProto* graph_proto_ = nullptr;
  std::unordered_map<const Value*, std::string> names_;
  std::set<std::string> used_names_;
  std::map<std::pair<const void*, at::ScalarType>, std::string> initializers_;
  std::vector<at::Tensor> kept_;
};

// aten::conv2d(input, weight, bias?, stride, padding, dilation, groups)
absl::Status Converter::Conv2d(const Node* n) {
  FT_ASSIGN_OR_RETURN(IValue padding, Static(n, 4));
  if (padding.isString()) return Unmapped(absl::StrCat(OpName(n), " with padding='", padding.toStringRef(), "'"));
  return Conv(n, /*groups_arg=*/6);
}

// aten::_convolution(input, weight, bias?, stride, padding, dilation,
// transposed, output_padding, groups, ...): the 2-d, not transposed kind.
absl::Status Converter::Convolution(const Node* n) {
  FT_ASSIGN_OR_RETURN(bool transposed, Bool(n, 6));
  if (transposed) return Unmapped(absl::StrCat(OpName(n), " (transposed)"));
  return Conv(n, /*groups_arg=*/8);
}

// Both: input, weight, bias?, stride, padding, dilation, ..., groups.
absl::Status Converter::Conv(const Node* n, size_t groups_arg) {
  FT_ASSIGN_OR_RETURN(std::vector<int64_t> stride, IntsOf(n, 3, 2));
  FT_ASSIGN_OR_RETURN(std::vector<int64_t> pad, IntsOf(n, 4, 2));
  FT_ASSIGN_OR_RETURN(std::vector<int64_t> dilation, IntsOf(n, 5, 2));
  FT_ASSIGN_OR_RETURN(int64_t groups, Int(n, groups_arg));
  if (Rank(n->inputs()[1]) != 4) {
    return Unmapped(absl::StrCat(OpName(n), " with a ", Rank(n->inputs()[1]), "-d weight"));
  }
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  FT_ASSIGN_OR_RETURN(std::string w, In(n, 1));
  std::vector<std::string> inputs = {x, w};
  FT_ASSIGN_OR_RETURN(bool no_bias, IsNone(n, 2));
  if (!no_bias) {
    FT_ASSIGN_OR_RETURN(std::string b, In(n, 2));
    inputs.push_back(b);
  }
  const auto w_sizes = Sizes(n->inputs()[1]);
  onnx::NodeProto* conv = AddNode("Conv", inputs, {Out(n->output())});
  IntsAttr(conv, "kernel_shape", {w_sizes[2], w_sizes[3]});
  IntsAttr(conv, "strides", stride);
  IntsAttr(conv, "pads", {pad[0], pad[1], pad[0], pad[1]});
  IntsAttr(conv, "dilations", dilation);
  IntAttr(conv, "group", groups);
  return absl::OkStatus();
}

// aten::batch_norm(input, weight?, bias?, running_mean?, running_var?,
// training, momentum, eps, cudnn_enabled), in eval mode: a BatchNorm that
// freezing could not fold (one that no convolution precedes).
absl::Status Converter::BatchNorm(const Node* n) {
  FT_ASSIGN_OR_RETURN(bool training, Bool(n, 5));
  FT_ASSIGN_OR_RETURN(bool no_mean, IsNone(n, 3));
  FT_ASSIGN_OR_RETURN(bool no_var, IsNone(n, 4));
  if (training || no_mean || no_var) return Unmapped(absl::StrCat(OpName(n), " with batch statistics"));
  FT_ASSIGN_OR_RETURN(double eps, Double(n, 7));
  const int64_t channels = Sizes(n->inputs()[0])[1];
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  std::vector<std::string> inputs = {x};
  for (size_t i : {1, 2}) {
    FT_ASSIGN_OR_RETURN(bool none, IsNone(n, i));
    if (none) {
      inputs.push_back(FloatTensor(i == 1 ? torch::ones({channels}) : torch::zeros({channels}),
                                   i == 1 ? "bn_scale" : "bn_bias"));
    } else {
      FT_ASSIGN_OR_RETURN(std::string v, In(n, i));
      inputs.push_back(v);
    }
  }
  for (size_t i : {3, 4}) {
    FT_ASSIGN_OR_RETURN(std::string v, In(n, i));
    inputs.push_back(v);
  }
  onnx::NodeProto* bn = AddNode("BatchNormalization", inputs, {Out(n->output())});
  FloatAttr(bn, "epsilon", eps);
  return absl::OkStatus();
}

// aten::layer_norm(input, normalized_shape, weight?, bias?, eps, cudnn_enable)
absl::Status Converter::LayerNorm(const Node* n) {
  FT_ASSIGN_OR_RETURN(std::vector<int64_t> shape, Ints(n, 1));
  FT_ASSIGN_OR_RETURN(double eps, Double(n, 4));
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  std::vector<std::string> inputs = {x};
  for (size_t i : {2, 3}) {
    FT_ASSIGN_OR_RETURN(bool none, IsNone(n, i));
    if (none) {
      inputs.push_back(FloatTensor(i == 2 ? torch::ones(shape) : torch::zeros(shape), i == 2 ? "ln_scale" : "ln_bias"));
    } else {
      FT_ASSIGN_OR_RETURN(std::string v, In(n, i));
      inputs.push_back(v);
    }
  }
  onnx::NodeProto* ln = AddNode("LayerNormalization", inputs, {Out(n->output())});
  IntAttr(ln, "axis", Rank(n->inputs()[0]) - static_cast<int64_t>(shape.size()));
  FloatAttr(ln, "epsilon", eps);
  return absl::OkStatus();
}

absl::Status Converter::Unary(const Node* n) {
  static const auto* kOps = new std::map<std::string, std::string>{
      {"aten::relu", "Relu"}, {"aten::sigmoid", "Sigmoid"}, {"aten::tanh", "Tanh"},
      {"aten::hardswish", "HardSwish"}, {"aten::exp", "Exp"}, {"aten::neg", "Neg"},
      {"aten::sqrt", "Sqrt"}, {"aten::abs", "Abs"}, {"aten::erf", "Erf"},
      {"aten::reciprocal", "Reciprocal"}, {"aten::log", "Log"}};
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  AddNode(kOps->at(OpName(n)), {x}, {Out(n->output())});
  return absl::OkStatus();
}

// Ops that do nothing to the values: contiguous, clone, detach.
absl::Status Converter::Identity(const Node* n) {
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  AddNode("Identity", {x}, {Out(n->output())});
  return absl::OkStatus();
}

// aten::dropout(input, p, train) and its kin: nothing in eval mode.
absl::Status Converter::Dropout(const Node* n) {
  FT_ASSIGN_OR_RETURN(bool train, Bool(n, 2));
  if (train) return Unmapped(absl::StrCat(OpName(n), " in training mode"));
  return Identity(n);
}

absl::Status Converter::HardSigmoid(const Node* n) {
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  onnx::NodeProto* node = AddNode("HardSigmoid", {x}, {Out(n->output())});
  FloatAttr(node, "alpha", 1.0 / 6.0);
  FloatAttr(node, "beta", 0.5);
  return absl::OkStatus();
}

absl::Status Converter::Silu(const Node* n) {
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  AddNode("Mul", {x, AddTemp("Sigmoid", {x})}, {Out(n->output())});
  return absl::OkStatus();
}

// aten::gelu(input, approximate): opset 17 has no Gelu; as torch.onnx does,
// x * 0.5 * (1 + erf(x / sqrt(2))), or the tanh approximation.
absl::Status Converter::Gelu(const Node* n) {
  std::string approximate = "none";
  if (n->inputs().size() > 1) {
    FT_ASSIGN_OR_RETURN(IValue a, Static(n, 1));
    if (a.isString()) approximate = a.toStringRef();
  }
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  std::string inner;
  if (approximate == "none") {
    inner = AddTemp("Erf", {AddTemp("Div", {x, FloatScalar(std::sqrt(2.0))})});
  } else if (approximate == "tanh") {
    const std::string cube = AddTemp("Mul", {AddTemp("Mul", {x, x}), x});
    const std::string sum = AddTemp("Add", {x, AddTemp("Mul", {cube, FloatScalar(0.044715)})});
    inner = AddTemp("Tanh", {AddTemp("Mul", {sum, FloatScalar(std::sqrt(2.0 / kPi))})});
  } else {
    return Unmapped(absl::StrCat(OpName(n), " with approximate='", approximate, "'"));
  }
  const std::string one_plus = AddTemp("Add", {inner, FloatScalar(1.0)});
  AddNode("Mul", {AddTemp("Mul", {x, FloatScalar(0.5)}), one_plus}, {Out(n->output())});
  return absl::OkStatus();
}

// aten::hardtanh(x, min, max), aten::relu6(x), aten::clamp(x, min?, max?)
absl::Status Converter::Clamp(const Node* n) {
  std::string low, high;
  if (OpName(n) == "aten::relu6") {
    low = FloatScalar(0.0);
    high = FloatScalar(6.0);
  } else {
    for (size_t i : {1, 2}) {
      FT_ASSIGN_OR_RETURN(IValue v, Static(n, i));
      if (v.isNone()) continue;
      FT_ASSIGN_OR_RETURN(double bound, Double(n, i));
      (i == 1 ? low : high) = FloatScalar(bound);
    }
  }
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  AddNode("Clip", {x, low, high}, {Out(n->output())});
  return absl::OkStatus();
}

absl::Status Converter::LeakyRelu(const Node* n) {
  double slope = 0.01;
  if (n->inputs().size() > 1) {
    FT_ASSIGN_OR_RETURN(slope, Double(n, 1));
  }
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  onnx::NodeProto* node = AddNode("LeakyRelu", {x}, {Out(n->output())});
  FloatAttr(node, "alpha", slope);
  return absl::OkStatus();
}

// aten::softmax / log_softmax(input, dim, dtype?)
absl::Status Converter::Softmax(const Node* n) {
  FT_ASSIGN_OR_RETURN(int64_t dim, Int(n, 1));
  if (n->inputs().size() > 2) {
    FT_ASSIGN_OR_RETURN(bool no_dtype, IsNone(n, 2));
    if (!no_dtype) return Unmapped(absl::StrCat(OpName(n), " with a dtype"));
  }
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  onnx::NodeProto* node =
      AddNode(OpName(n) == "aten::softmax" ? "Softmax" : "LogSoftmax", {x}, {Out(n->output())});
  IntAttr(node, "axis", Axis(dim, Rank(n->inputs()[0])));
  return absl::OkStatus();
}

// aten::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)
absl::Status Converter::MaxPool2d(const Node* n) {
  FT_ASSIGN_OR_RETURN(std::vector<int64_t> kernel, IntsOf(n, 1, 2));
  FT_ASSIGN_OR_RETURN(std::vector<int64_t> stride, PoolStride(n, kernel));
  FT_ASSIGN_OR_RETURN(std::vector<int64_t> padding, IntsOf(n, 3, 2));
  FT_ASSIGN_OR_RETURN(std::vector<int64_t> dilation, IntsOf(n, 4, 2));
  FT_ASSIGN_OR_RETURN(bool ceil, Bool(n, 5));
  FT_ASSIGN_OR_RETURN(PoolPads pads, Pads(n, kernel, stride, padding, dilation, ceil, /*extra_pads_are_safe=*/true));
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  onnx::NodeProto* pool = AddNode("MaxPool", {x}, {Out(n->output())});
  IntsAttr(pool, "kernel_shape", kernel);
  IntsAttr(pool, "strides", stride);
  IntsAttr(pool, "pads", pads.pads);
  IntsAttr(pool, "dilations", dilation);
  return absl::OkStatus();
}

// aten::avg_pool2d(input, kernel_size, stride, padding, ceil_mode,
// count_include_pad, divisor_override?)
absl::Status Converter::AvgPool2d(const Node* n) {
  FT_ASSIGN_OR_RETURN(std::vector<int64_t> kernel, IntsOf(n, 1, 2));
  FT_ASSIGN_OR_RETURN(std::vector<int64_t> stride, PoolStride(n, kernel));
  FT_ASSIGN_OR_RETURN(std::vector<int64_t> padding, IntsOf(n, 3, 2));
  FT_ASSIGN_OR_RETURN(bool ceil, Bool(n, 4));
  FT_ASSIGN_OR_RETURN(bool count_include_pad, Bool(n, 5));
  FT_ASSIGN_OR_RETURN(bool no_divisor, IsNone(n, 6));
  if (!no_divisor) return Unmapped(absl::StrCat(OpName(n), " with divisor_override"));
  // With count_include_pad, PyTorch counts the padding but not what
  // ceil_mode adds past it; ONNX would count both.
  FT_ASSIGN_OR_RETURN(PoolPads pads, Pads(n, kernel, stride, padding, {1, 1}, ceil,
                                          /*extra_pads_are_safe=*/!count_include_pad));
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  onnx::NodeProto* pool = AddNode("AveragePool", {x}, {Out(n->output())});
  IntsAttr(pool, "kernel_shape", kernel);
  IntsAttr(pool, "strides", stride);
  IntsAttr(pool, "pads", pads.pads);
  IntAttr(pool, "count_include_pad", count_include_pad ? 1 : 0);
  return absl::OkStatus();
}

// The matrix of adaptive average pooling along one axis: out x in, row i
// averaging PyTorch's window [floor(i*in/out), ceil((i+1)*in/out)).
at::Tensor AdaptiveMatrix(int64_t in, int64_t out) {
  at::Tensor m = torch::zeros({out, in}, torch::kDouble);
  for (int64_t i = 0; i < out; ++i) {
    const int64_t start = (i * in) / out;
    const int64_t end = ((i + 1) * in + out - 1) / out;
    m.index_put_({i, torch::indexing::Slice(start, end)}, 1.0 / static_cast<double>(end - start));
  }
  return m;
}

// aten::adaptive_avg_pool2d(input, output_size): GlobalAveragePool to 1x1,
// AveragePool where the sizes divide, and otherwise (VGG's 7x7 from a small
// image) its exact linear form for the fixed input size: A_h . X . A_w^T.
absl::Status Converter::AdaptiveAvgPool2d(const Node* n) {
  const auto in = Sizes(n->inputs()[0]);
  const auto out = Sizes(n->output());
  const size_t r = in.size();
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  const int64_t ih = in[r - 2], iw = in[r - 1], oh = out[r - 2], ow = out[r - 1];
  if (ih == oh && iw == ow) {
    AddNode("Identity", {x}, {Out(n->output())});
  } else if (oh == 1 && ow == 1 && r == 4) {
    AddNode("GlobalAveragePool", {x}, {Out(n->output())});
  } else if (ih % oh == 0 && iw % ow == 0 && r == 4) {
    onnx::NodeProto* pool = AddNode("AveragePool", {x}, {Out(n->output())});
    IntsAttr(pool, "kernel_shape", {ih / oh, iw / ow});
    IntsAttr(pool, "strides", {ih / oh, iw / ow});
  } else {
    const std::string rows = FloatTensor(AdaptiveMatrix(ih, oh), "adaptive_pool_rows");
    const std::string cols = FloatTensor(AdaptiveMatrix(iw, ow).t().contiguous(), "adaptive_pool_cols");
    AddNode("MatMul", {rows, AddTemp("MatMul", {x, cols})}, {Out(n->output())});
  }
  return absl::OkStatus();
}

// aten::adaptive_max_pool2d(input, output_size) -> (values, indices): to
// 1x1 with the indices unused.
absl::Status Converter::AdaptiveMaxPool2d(const Node* n) {
  const auto out = Sizes(n->outputs()[0]);
  if (n->outputs()[1]->hasUses() || Rank(n->inputs()[0]) != 4 || out[2] != 1 || out[3] != 1) {
    return Unmapped(absl::StrCat(OpName(n), " to other than 1x1, or with its indices"));
  }
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  AddNode("GlobalMaxPool", {x}, {Out(n->outputs()[0])});
  return absl::OkStatus();
}

// flatten, view, reshape, squeeze, unsqueeze: the shape is known from the
// runs, so each is one Reshape.
absl::Status Converter::Reshape(const Node* n) {
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  return ReshapeTo(n, x, n->output());
}

// aten::linear(input, weight, bias?): Gemm for 2-d input, else MatMul (with
// the weight transposed once, when it is a constant) and Add.
absl::Status Converter::Linear(const Node* n) {
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  FT_ASSIGN_OR_RETURN(bool no_bias, IsNone(n, 2));
  std::string bias;
  if (!no_bias) {
    FT_ASSIGN_OR_RETURN(bias, In(n, 2));
  }
  if (Rank(n->inputs()[0]) == 2) {
    FT_ASSIGN_OR_RETURN(std::string w, In(n, 1));
    std::vector<std::string> inputs = {x, w};
    if (!no_bias) inputs.push_back(bias);
    onnx::NodeProto* gemm = AddNode("Gemm", inputs, {Out(n->output())});
    IntAttr(gemm, "transB", 1);
    return absl::OkStatus();
  }
  std::string wt;
  if (IsDynamic(n->inputs()[1])) {
    FT_ASSIGN_OR_RETURN(std::string w, In(n, 1));
    onnx::NodeProto* t = nullptr;
    wt = AddTemp("Transpose", {w}, &t);
    IntsAttr(t, "perm", {1, 0});
  } else {
    wt = FloatTensor(A(n->inputs()[1]).toTensor().t().contiguous(), n->inputs()[1]->debugName() + "_t");
  }
  if (no_bias) {
    AddNode("MatMul", {x, wt}, {Out(n->output())});
  } else {
    AddNode("Add", {AddTemp("MatMul", {x, wt}), bias}, {Out(n->output())});
  }
  return absl::OkStatus();
}

// aten::addmm(self, mat1, mat2, beta, alpha) = beta * self + alpha * mat1 @ mat2
absl::Status Converter::Addmm(const Node* n) {
  FT_ASSIGN_OR_RETURN(double beta, Double(n, 3));
  FT_ASSIGN_OR_RETURN(double alpha, Double(n, 4));
  FT_ASSIGN_OR_RETURN(std::string c, In(n, 0));
  FT_ASSIGN_OR_RETURN(std::string a, In(n, 1));
  FT_ASSIGN_OR_RETURN(std::string b, In(n, 2));
  onnx::NodeProto* gemm = AddNode("Gemm", {a, b, c}, {Out(n->output())});
  FloatAttr(gemm, "alpha", alpha);
  FloatAttr(gemm, "beta", beta);
  return absl::OkStatus();
}

absl::Status Converter::Matmul(const Node* n) {
  FT_ASSIGN_OR_RETURN(std::string a, In(n, 0));
  FT_ASSIGN_OR_RETURN(std::string b, In(n, 1));
  AddNode("MatMul", {a, b}, {Out(n->output())});
  return absl::OkStatus();
}

// add / sub (a, b, alpha), mul / div (a, b): tensors or numbers, with
// NumPy's broadcasting, which is PyTorch's.
absl::Status Converter::Binary(const Node* n) {
  const std::string op = OpName(n);
  if (op == "aten::div" && n->inputs().size() > 2) {
    FT_ASSIGN_OR_RETURN(bool no_mode, IsNone(n, 2));
    if (!no_mode) return Unmapped(absl::StrCat(op, " with a rounding mode"));
  }
  FT_ASSIGN_OR_RETURN(std::string a, In(n, 0));
  FT_ASSIGN_OR_RETURN(std::string b, In(n, 1));
  if ((op == "aten::add" || op == "aten::sub") && n->inputs().size() > 2) {
    FT_ASSIGN_OR_RETURN(double alpha, Double(n, 2));
    if (alpha != 1.0) b = AddTemp("Mul", {b, FloatScalar(alpha)});
  }
  static const auto* kOps = new std::map<std::string, std::string>{
      {"aten::add", "Add"}, {"aten::sub", "Sub"}, {"aten::mul", "Mul"}, {"aten::div", "Div"}};
  AddNode(kOps->at(op), {a, b}, {Out(n->output())});
  return absl::OkStatus();
}

// aten::cat(tensors, dim), the list made by prim::ListConstruct.
absl::Status Converter::Cat(const Node* n) {
  const Node* list = n->inputs()[0]->node();
  if (list->kind() != c10::prim::ListConstruct) return Unmapped(absl::StrCat(OpName(n), " of a computed list"));
  FT_ASSIGN_OR_RETURN(int64_t dim, Int(n, 1));
  std::vector<std::string> inputs;
  for (const Value* v : list->inputs()) {
    FT_ASSIGN_OR_RETURN(std::string name, In(v));
    inputs.push_back(name);
  }
  onnx::NodeProto* concat = AddNode("Concat", inputs, {Out(n->output())});
  IntAttr(concat, "axis", Axis(dim, Rank(n->output())));
  return absl::OkStatus();
}

absl::Status Converter::Permute(const Node* n) {
  FT_ASSIGN_OR_RETURN(std::vector<int64_t> dims, Ints(n, 1));
  const int64_t rank = Rank(n->inputs()[0]);
  for (auto& d : dims) d = Axis(d, rank);
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  onnx::NodeProto* t = AddNode("Transpose", {x}, {Out(n->output())});
  IntsAttr(t, "perm", dims);
  return absl::OkStatus();
}

// aten::transpose(x, dim0, dim1), aten::t(x)
absl::Status Converter::Transpose(const Node* n) {
  const int64_t rank = Rank(n->inputs()[0]);
  std::vector<int64_t> perm(static_cast<size_t>(rank));
  for (int64_t d = 0; d < rank; ++d) perm[static_cast<size_t>(d)] = d;
  if (OpName(n) == "aten::transpose") {
    FT_ASSIGN_OR_RETURN(int64_t d0, Int(n, 1));
    FT_ASSIGN_OR_RETURN(int64_t d1, Int(n, 2));
    std::swap(perm[static_cast<size_t>(Axis(d0, rank))], perm[static_cast<size_t>(Axis(d1, rank))]);
  } else {
    std::reverse(perm.begin(), perm.end());
  }
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  onnx::NodeProto* t = AddNode("Transpose", {x}, {Out(n->output())});
  IntsAttr(t, "perm", perm);
  return absl::OkStatus();
}

// aten::mean(x, dtype?) and aten::mean(x, dim, keepdim, dtype?): ReduceMean
// (axes still an attribute in opset 17).
absl::Status Converter::Mean(const Node* n) {
  const int64_t rank = Rank(n->inputs()[0]);
  std::vector<int64_t> axes;
  bool keepdim = false;
  size_t dtype_arg = 1;
  if (n->inputs().size() >= 3) {
    FT_ASSIGN_OR_RETURN(IValue dims, Static(n, 1));
    if (!dims.isNone()) {
      FT_ASSIGN_OR_RETURN(axes, Ints(n, 1));
    }
    FT_ASSIGN_OR_RETURN(keepdim, Bool(n, 2));
    dtype_arg = 3;
  }
  if (n->inputs().size() > dtype_arg) {
    FT_ASSIGN_OR_RETURN(bool no_dtype, IsNone(n, dtype_arg));
    if (!no_dtype) return Unmapped(absl::StrCat(OpName(n), " with a dtype"));
  }
  if (axes.empty()) {
    for (int64_t d = 0; d < rank; ++d) axes.push_back(d);
  }
  for (auto& d : axes) d = Axis(d, rank);
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  onnx::NodeProto* mean = AddNode("ReduceMean", {x}, {Out(n->output())});
  IntsAttr(mean, "axes", axes);
  IntAttr(mean, "keepdims", keepdim ? 1 : 0);
  return absl::OkStatus();
}

// aten::sum(x, dtype?) and aten::sum(x, dim, keepdim, dtype?): ReduceSum
// (axes an input since opset 13; none: every axis).
absl::Status Converter::Sum(const Node* n) {
  if (n->inputs().size() < 3) {
    if (n->inputs().size() > 1) {
      FT_ASSIGN_OR_RETURN(bool no_dtype, IsNone(n, 1));
      if (!no_dtype) return Unmapped(absl::StrCat(OpName(n), " with a dtype"));
    }
    FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
    onnx::NodeProto* sum = AddNode("ReduceSum", {x}, {Out(n->output())});
    IntAttr(sum, "keepdims", 0);
    return absl::OkStatus();
  }
  const int64_t rank = Rank(n->inputs()[0]);
  FT_ASSIGN_OR_RETURN(std::vector<int64_t> axes, Ints(n, 1));
  FT_ASSIGN_OR_RETURN(bool keepdim, Bool(n, 2));
  if (n->inputs().size() > 3) {
    FT_ASSIGN_OR_RETURN(bool no_dtype, IsNone(n, 3));
    if (!no_dtype) return Unmapped(absl::StrCat(OpName(n), " with a dtype"));
  }
  for (auto& d : axes) d = Axis(d, rank);
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  onnx::NodeProto* sum = AddNode("ReduceSum", {x, Int64s(axes, "axes")}, {Out(n->output())});
  IntAttr(sum, "keepdims", keepdim ? 1 : 0);
  return absl::OkStatus();
}

// aten::select(x, dim, index): Gather with a scalar index drops the dim.
absl::Status Converter::Select(const Node* n) {
  FT_ASSIGN_OR_RETURN(int64_t dim, Int(n, 1));
  FT_ASSIGN_OR_RETURN(int64_t index, Int(n, 2));
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  onnx::NodeProto* gather = AddNode("Gather", {x, Int64Scalar(index, "index")}, {Out(n->output())});
  IntAttr(gather, "axis", Axis(dim, Rank(n->inputs()[0])));
  return absl::OkStatus();
}

// aten::slice(x, dim, start?, end?, step)
absl::Status Converter::Slice(const Node* n) {
  FT_ASSIGN_OR_RETURN(int64_t dim, Int(n, 1));
  FT_ASSIGN_OR_RETURN(IValue start, Static(n, 2));
  FT_ASSIGN_OR_RETURN(IValue end, Static(n, 3));
  FT_ASSIGN_OR_RETURN(int64_t step, Int(n, 4));
  if (!(start.isNone() || start.isInt()) || !(end.isNone() || end.isInt())) {
    return Unmapped(absl::StrCat(OpName(n), " with non-int bounds"));
  }
  const int64_t s = start.isNone() ? 0 : start.toInt();
  const int64_t e = end.isNone() ? std::numeric_limits<int64_t>::max() : end.toInt();
  FT_ASSIGN_OR_RETURN(std::string x, In(n, 0));
  AddNode("Slice",
          {x, Int64s({s}, "starts"), Int64s({e}, "ends"), Int64s({Axis(dim, Rank(n->inputs()[0]))}, "axes"),
           Int64s({step}, "steps")},
          {Out(n->output())});
  return absl::OkStatus();
}

const std::map<std::string, Handler>& Handlers() {
  static const auto* kHandlers = new std::map<std::string, Handler>{
      {"aten::conv2d", &Converter::Conv2d},
      {"aten::_convolution", &Converter::Convolution},
      {"aten::batch_norm", &Converter::BatchNorm},
      {"aten::layer_norm", &Converter::LayerNorm},
      {"aten::relu", &Converter::Unary},
      {"aten::sigmoid", &Converter::Unary},
      {"aten::tanh", &Converter::Unary},
      {"aten::hardswish", &Converter::Unary},
      {"aten::exp", &Converter::Unary},
      {"aten::neg", &Converter::Unary},
      {"aten::sqrt", &Converter::Unary},
      {"aten::abs", &Converter::Unary},
      {"aten::erf", &Converter::Unary},
      {"aten::reciprocal", &Converter::Unary},
      {"aten::log", &Converter::Unary},
      {"aten::contiguous", &Converter::Identity},
      {"aten::clone", &Converter::Identity},
      {"aten::detach", &Converter::Identity},
      {"aten::dropout", &Converter::Dropout},
      {"aten::feature_dropout", &Converter::Dropout},
      {"aten::alpha_dropout", &Converter::Dropout},
      {"aten::hardsigmoid", &Converter::HardSigmoid},
      {"aten::silu", &Converter::Silu},
      {"aten::gelu", &Converter::Gelu},
      {"aten::hardtanh", &Converter::Clamp},
      {"aten::relu6", &Converter::Clamp},
      {"aten::clamp", &Converter::Clamp},
      {"aten::leaky_relu", &Converter::LeakyRelu},
      {"aten::softmax", &Converter::Softmax},
      {"aten::log_softmax", &Converter::Softmax},
      {"aten::max_pool2d", &Converter::MaxPool2d},
      {"aten::avg_pool2d", &Converter::AvgPool2d},
      {"aten::adaptive_avg_pool2d", &Converter::AdaptiveAvgPool2d},
      {"aten::adaptive_max_pool2d", &Converter::AdaptiveMaxPool2d},
      {"aten::flatten", &Converter::Reshape},
      {"aten::view", &Converter::Reshape},
      {"aten::reshape", &Converter::Reshape},
      {"aten::squeeze", &Converter::Reshape},
      {"aten::unsqueeze", &Converter::Reshape},
      {"aten::linear", &Converter::Linear},
      {"aten::addmm", &Converter::Addmm},
      {"aten::matmul", &Converter::Matmul},
      {"aten::add", &Converter::Binary},
      {"aten::sub", &Converter::Binary},
      {"aten::mul", &Converter::Binary},
      {"aten::div", &Converter::Binary},
      {"aten::cat", &Converter::Cat},
      {"aten::permute", &Converter::Permute},
      {"aten::transpose", &Converter::Transpose},
      {"aten::t", &Converter::Transpose},
      {"aten::mean", &Converter::Mean},
      {"aten::sum", &Converter::Sum},
      {"aten::select", &Converter::Select},
      {"aten::slice", &Converter::Slice},
  };
  return *kHandlers;
}

// The ops of `graph` that the converter cannot take, each once, in graph
// order: dynamic nodes without a handler, nodes it cannot run, control flow
// and in-place ops (whose effect on other values a mapping would lose).
// With `before_probe`, prim::If is left for the probe to resolve.
std::vector<std::string> UnmappedOps(const Graph& graph, bool before_probe) {
  std::unordered_set<const Value*> dynamic = {graph.inputs()[1]};
  std::vector<std::string> ops;
  const auto add = [&](const std::string& op) {
    if (std::find(ops.begin(), ops.end(), op) == ops.end()) ops.push_back(op);
  };
  for (const Node* node : graph.nodes()) {
    bool is_dynamic = false;
    for (const Value* v : node->inputs()) is_dynamic |= dynamic.count(v) > 0;
    if (is_dynamic) dynamic.insert(node->outputs().begin(), node->outputs().end());
    if (before_probe && node->kind() == c10::prim::If) continue;
    const bool in_place = node->maybeSchema() != nullptr && node->schema().is_mutable();
    if (!node->blocks().empty() || in_place || !IsEvaluable(node)) {
      add(OpName(node));
      continue;
    }
    if (!is_dynamic || node->kind() == c10::prim::ListConstruct || node->kind() == c10::prim::TupleConstruct) continue;
    const bool makes_tensors = std::any_of(node->outputs().begin(), node->outputs().end(),
                                           [](const Value* v) { return IsTensorType(v->type()); });
    if (makes_tensors && Handlers().count(OpName(node)) == 0) add(OpName(node));
  }
  return ops;
}

absl::Status UnmappedError(const std::vector<std::string>& ops) {
  return Unmapped(ops.size() == 1 ? ops[0]
                                  : absl::StrCat(ops[0], " (and ", ops.size() - 1, " more: ",
                                                 absl::StrJoin(ops.begin() + 1, ops.end(), ", "), ")"));
}

// Rewrites the appends to a list of tensors (DenseNet's `features.append(
// layer(torch.cat(features, 1)))`, which RemoveListMutation leaves because
// the list is read between appends) into a new list literal per append, so
// that every read sees a fixed list. Only lists made, appended to and read
// in the top-level block, by ops that only read them, are rewritten.
void FunctionalizeListAppends(Graph& graph) {
  static const auto* kReaders = new std::set<c10::Symbol>{c10::aten::cat, c10::aten::stack, c10::aten::len,
                                                           c10::aten::__getitem__};
  std::vector<Node*> lists;
  for (Node* node : graph.nodes()) {
    if (node->kind() == c10::prim::ListConstruct && IsTensorType(node->output()->type())) lists.push_back(node);
  }
  for (Node* list : lists) {
    std::vector<torch::jit::Use> uses = list->output()->uses();
    const bool simple = std::all_of(uses.begin(), uses.end(), [&](const torch::jit::Use& u) {
      if (u.user->owningBlock() != graph.block()) return false;
      if (u.user->kind() == c10::aten::append) return u.offset == 0 && !u.user->output()->hasUses();
      return kReaders->count(u.user->kind()) > 0;
    });
    if (!simple || std::none_of(uses.begin(), uses.end(),
                                [](const torch::jit::Use& u) { return u.user->kind() == c10::aten::append; })) {
      continue;
    }
    std::sort(uses.begin(), uses.end(),
              [](const torch::jit::Use& a, const torch::jit::Use& b) { return a.user->isBefore(b.user); });
    std::vector<Value*> elements(list->inputs().begin(), list->inputs().end());
    Value* current = list->output();
    for (const torch::jit::Use& use : uses) {
      if (use.user->kind() != c10::aten::append) {
        use.user->replaceInput(use.offset, current);
        continue;
      }
      elements.push_back(use.user->inputs()[1]);
      Node* next = graph.createList(list->output()->type()->expectRef<c10::ListType>().getElementType(), elements);
      next->insertBefore(use.user);
      current = next->output();
      use.user->destroy();
    }
  }
}

absl::StatusOr<OnnxExport> Export(const torch::jit::Module& classifier, int64_t image_size) {
  if (image_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(Prefix(), "image size ", image_size, " is not positive"));
  }
  for (const char* method : {"forward", "features"}) {
    if (!classifier.find_method(method)) {
      return absl::FailedPreconditionError(absl::StrCat(Prefix(), "the model has no ", method, "(x) method"));
    }
  }
  torch::jit::Module frozen;
  try {
    frozen = FreezeBoth(classifier);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(Prefix(), "cannot freeze the model: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(Prefix(), "cannot freeze the model: ", e.what()));
  }
  std::shared_ptr<Graph> graph = frozen.get_method("forward").graph()->copy();
  // List appends (DenseNet's features list) become list literals, and
  // in-place ops (a scripted torchvision model's ReLU(inplace=True)) their
  // functional forms, where that provably changes nothing.
  torch::jit::RemoveListMutation(graph);
  FunctionalizeListAppends(*graph);
  torch::jit::RemoveTensorMutation(graph);
  // Freezing could not merge forward's and features' copies of what was
  // mutated; now they are plain nodes.
  torch::jit::ConstantPooling(graph);
  torch::jit::EliminateCommonSubexpression(graph);
  torch::jit::EliminateDeadCode(graph);
  if (auto unmapped = UnmappedOps(*graph, /*before_probe=*/true); !unmapped.empty()) return UnmappedError(unmapped);

  Probe probe;
  bool complete = false;
  int branches = 0;
  try {
    // Random, not zeros: no op should see a degenerate input.
    at::Generator gen = at::detail::createCPUGenerator(/*seed_in=*/20240517);
    at::Tensor x[2];
    for (int r = 0; r < 2; ++r) {
      x[r] = at::randn({kProbeBatch[r], 3, image_size, image_size}, gen, at::TensorOptions(at::kFloat));
    }
    complete = RunProbe(*graph, frozen._ivalue(), x, &probe, &branches);
    if (complete && branches > 0) {
      // forward and features each had their own copies of the branches,
      // which freezing could not merge; now they are plain nodes. A shape
      // check between a convolution and its BatchNorm kept them apart too.
      torch::jit::OptimizeFrozenGraph(graph, /*optimize_numerics=*/true);
      torch::jit::ConstantPooling(graph);
      torch::jit::EliminateCommonSubexpression(graph);
      torch::jit::EliminateDeadCode(graph);
      probe = Probe();
      complete = RunProbe(*graph, frozen._ivalue(), x, &probe, &branches);
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(Prefix(), "the frozen model does not run on ", image_size, " px: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat(Prefix(), "the frozen model does not run on ", image_size, " px: ", e.what()));
  }
  // The branches the probe inlined may hold unmapped ops too.
  if (auto unmapped = UnmappedOps(*graph, /*before_probe=*/false); !unmapped.empty()) return UnmappedError(unmapped);
  if (!complete) return absl::InternalError(absl::StrCat(Prefix(), "the probe stopped on a mapped op"));

  Converter converter(*graph, probe);
  FT_ASSIGN_OR_RETURN(onnx::ModelProto model, converter.Convert());
  if (model.ByteSizeLong() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return absl::FailedPreconditionError(
        absl::StrCat(Prefix(), "the model is ", model.ByteSizeLong(), " bytes, more than protobuf's 2 GiB"));
  }
  OnnxExport out;
  if (branches > 0) {
    out.warnings.push_back(absl::StrCat("followed ", branches, " shape check", branches == 1 ? "" : "s",
                                        " (prim::If) that hold for every [N,3,", image_size, ",", image_size,
                                        "] input"));
  }
  if (!model.SerializeToString(&out.model_proto_bytes)) {
    return absl::InternalError(absl::StrCat(Prefix(), "cannot serialise the ONNX model"));
  }
  return out;
}

}  // namespace

absl::StatusOr<OnnxExport> ExportOnnx(const torch::jit::Module& classifier, int64_t image_size) {
  try {
    return Export(classifier, image_size);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(Prefix(), e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(Prefix(), e.what()));
  }
}

absl::Status WriteOnnx(const torch::jit::Module& classifier, int64_t image_size, const std::string& path,
                       std::vector<std::string>* warnings) {
  FT_ASSIGN_OR_RETURN(OnnxExport onnx, ExportOnnx(classifier, image_size));
  if (warnings != nullptr) *warnings = onnx.warnings;
  absl::Status written = util::WriteFileAtomic(path, onnx.model_proto_bytes);
  if (!written.ok()) {
    return absl::InternalError(absl::StrCat("cannot write ", path, ": ", written.message()));
  }
  return absl::OkStatus();
}

}  // namespace ft::worker
