#include "worker/train/sync_batch_norm.h"

#include <atomic>
#include <mutex>
#include <set>

#include <torch/csrc/api/include/torch/autograd.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/frontend/resolver.h>
#include <torch/csrc/jit/frontend/sugared_value.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/library.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ft::worker {
namespace {

// The gang the collective below sums across: the one job's, while its
// layers are swapped (a worker trains one job at a time).
std::atomic<Gang*> current_gang{nullptr};

// y = sum over the ranks of x, on every rank. Its gradient is the sum over
// the ranks of the output's gradients: each rank's statistics feed every
// rank's loss, so each rank's part of the global batch gets the gradient of
// the global loss through them (torch.nn.SyncBatchNorm's backward does the
// same with its all-reduce of sum_dy and sum_dy_xmu).
class AllReduceSum : public torch::autograd::Function<AllReduceSum> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& x) { return Summed(x); }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    return {Summed(grads[0])};
  }

 private:
  static torch::Tensor Summed(const torch::Tensor& x) {
    torch::Tensor out = x.detach().clone(at::MemoryFormat::Contiguous);
    if (Gang* gang = current_gang.load()) gang->AllReduceSum({out});  // throws GangError
    return out;
  }
};

torch::Tensor GangAllReduceSum(const torch::Tensor& x) { return AllReduceSum::apply(x); }

// CONSERVATIVE: a collective, which the graph optimiser must neither drop,
// merge nor move.
TORCH_LIBRARY(ft, m) {
  m.def(torch::schema("ft::gang_all_reduce_sum(Tensor x) -> Tensor", c10::AliasAnalysisKind::CONSERVATIVE),
        &GangAllReduceSum);
}

// The training branch normalises with the global batch's statistics, summed
// in float64 (sum and sum of squares: one collective a layer); the running
// statistics take the unbiased global variance, as torch.nn.BatchNorm2d's
// do on one worker. The eval branch is the layer's own.
std::string SyncForward(double momentum, double eps) {
  // 7 is torch.float64 (c10::ScalarType::Double): C++'s resolver knows no
  // torch.float64.
  return absl::StrFormat(R"(
def forward(self, x):
    if self.training:
        self.num_batches_tracked.add_(1)
        c = x.size(1)
        count = torch.full([1], float(x.numel() // c), dtype=7, device=x.device)
        local = torch.cat([x.sum([0, 2, 3], dtype=7), (x * x).sum([0, 2, 3], dtype=7), count])
        total = ft.gang_all_reduce_sum(local)
        n = total[2 * c]
        mean = total[0:c] / n
        var = torch.clamp(total[c:2 * c] / n - mean * mean, min=0.0)
        seen = n.detach()
        self.running_mean.mul_(1.0 - %1$.17g).add_(mean.detach().to(self.running_mean.dtype), alpha=%1$.17g)
        unbiased = var.detach() * (seen / (seen - 1.0))
        self.running_var.mul_(1.0 - %1$.17g).add_(unbiased.to(self.running_var.dtype), alpha=%1$.17g)
        scale = self.weight.to(7) * torch.rsqrt(var + %2$.17g)
        shift = self.bias.to(7) - mean * scale
        return x * scale.to(x.dtype).view(1, c, 1, 1) + shift.to(x.dtype).view(1, c, 1, 1)
    return torch.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var, False, %1$.17g, %2$.17g, True)
)",
                         momentum, eps);
}

// Resolves what the forward above names: torch's builtins, as LibTorch's
// nativeResolver does, and this file's ft ops.
struct GangResolver : public torch::jit::Resolver {
  std::shared_ptr<torch::jit::SugaredValue> resolveValue(const std::string& name, torch::jit::GraphFunction&,
                                                         const torch::jit::SourceRange&) override {
    if (name == "torch") return std::make_shared<torch::jit::BuiltinModule>("aten");
    if (name == "ft") return std::make_shared<torch::jit::BuiltinModule>("ft");
    return nullptr;
  }
  c10::TypePtr resolveType(const std::string&, const torch::jit::SourceRange&) override { return nullptr; }
};

// A BatchNorm2d's momentum and eps, when it is finetuned's own: one
// aten::batch_norm with both as constants (jit_modules.cc's BatchNorm2d).
bool OwnBatchNorm(const torch::jit::Module& m, double* momentum, double* eps) {
  const c10::QualifiedName& name = *m.type()->name();
  if (!absl::StartsWith(name.qualifiedName(), "__torch__.ft.")) return false;
  for (const char* member : {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}) {
    if (!m.hasattr(member)) return false;
  }
  torch::jit::Function* forward = m.type()->findMethod("forward");
  if (forward == nullptr) return false;
  int found = 0;
  for (const torch::jit::Node* node : torch::jit::toGraphFunction(*forward).graph()->nodes()) {
    if (node->kind() != c10::Symbol::fromQualString("aten::batch_norm")) continue;
    const auto m_value = torch::jit::toIValue(node->input(6));
    const auto eps_value = torch::jit::toIValue(node->input(7));
    if (!m_value || !eps_value || !m_value->isDouble() || !eps_value->isDouble()) return false;
    *momentum = m_value->toDouble();
    *eps = eps_value->toDouble();
    ++found;
  }
  return found == 1;
}

// The compilation units of swapped-in forwards: kept for the process's
// life, since a method compiled while they were in place may still hold
// them (a few KB a job).
void Keep(std::shared_ptr<torch::jit::CompilationUnit> cu) {
  static std::mutex mu;
  static auto* kept = new std::vector<std::shared_ptr<torch::jit::CompilationUnit>>();
  std::lock_guard<std::mutex> lock(mu);
  kept->push_back(std::move(cu));
}

}  // namespace

absl::StatusOr<std::unique_ptr<SyncBatchNorm>> SyncBatchNorm::Install(torch::jit::Module& model, Gang* gang) {
  std::unique_ptr<SyncBatchNorm> sync(new SyncBatchNorm());
  auto cu = std::make_shared<torch::jit::CompilationUnit>();
  std::set<const c10::ClassType*> seen;
  for (const auto& named : model.named_modules()) {
    const torch::jit::Module& m = named.value;
    const c10::ClassTypePtr type = m.type();
    if (type->name()->name() != "BatchNorm2d" || !seen.insert(type.get()).second) continue;
    double momentum = 0, eps = 0;
    if (!OwnBatchNorm(m, &momentum, &eps)) {
      sync->Restore();
      return absl::FailedPreconditionError(absl::StrCat(
          "sync_bn: BatchNorm layer ", named.name.empty() ? "(the model)" : named.name, " (",
          type->name()->qualifiedName(),
          ") was not built by finetuned, so it cannot be synchronised; sync_bn works with the built-in "
          "architectures (and models trained from them), not with a TorchScript backbone's own layers"));
    }
    torch::jit::Function* original = type->findMethod("forward");
    type->unsafeRemoveMethod("forward");
    sync->swapped_.push_back({type, original});
    const torch::jit::SimpleSelf self(type);
    try {
      cu->define(*type->name(), SyncForward(momentum, eps), std::make_shared<GangResolver>(), &self);
    } catch (const std::exception& e) {
      // A failed definition may have left its method on the type.
      if (type->findMethod("forward") != nullptr) type->unsafeRemoveMethod("forward");
      return absl::InternalError(absl::StrCat("sync_bn: cannot define the synchronised forward of ", named.name,
                                              ": ", e.what()));
    }
  }
  Keep(std::move(cu));
  current_gang.store(gang);
  return sync;
}

void SyncBatchNorm::Restore() {
  if (restored_) return;
  restored_ = true;
  for (const Swapped& s : swapped_) {
    if (s.type->findMethod("forward") != nullptr) s.type->unsafeRemoveMethod("forward");
    s.type->addMethod(s.original);
  }
  current_gang.store(nullptr);
}

SyncBatchNorm::~SyncBatchNorm() { Restore(); }

}  // namespace ft::worker
