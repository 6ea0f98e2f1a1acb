// ftctl: the finetuned command-line client.
//
// Every command is one row of the table below; Run() (ftctl_commands.cc)
// parses, checks, dispatches and writes all help and usage text from it.
// Exit codes: 0 success (job SUCCEEDED), 1 job FAILED or CANCELLED,
// 2 request refused (bad flags or a server error), 3 server unreachable.
#include <vector>

#include "client/ftctl_commands.h"
#include "client/ftctl_handlers.h"

namespace ft::client::ftctl {
namespace {

// What submit takes; validate takes the same, so that a dry run checks the
// very command line that would be submitted.
std::vector<FlagSpec> SubmitFlags() {
  return {
      {"dataset", "URI", "file:///abs/dir, dataset://NAME, or a local path, taken as file://", true},
      {"backbone", "NAME", "a torchvision architecture: resnet18, mobilenet_v3_small, ...", true},
      {"weights", "pretrained|none|URI",
       "initial backbone weights: torchvision's file, random, file:///path or model://MODEL (default none)"},
      {"freeze-depth", "N|all", "backbone stages frozen from the input; all trains the head only (default 0)"},
      {"epochs", "N", "epochs to train (default 3)"},
      {"batch-size", "N", "images per step (default 32)"},
      {"image-size", "N", "input size in pixels (default 224)"},
      {"lr", "F", "learning rate (default 0.001)"},
      {"optimizer", "adam|adamw|sgd", "optimiser (default adam; sgd uses momentum 0.9)"},
      {"val-split", "F", "validation share for datasets without a val split (default 0.2)"},
      {"seed", "N", "seed of data order, augmentation and initialisation (default 0)"},
      {"name", "S", "a name for the job"},
      {"priority", "N", "higher runs first (default 0)"},
      {"request-id", "S", "a retried submit with the same id returns the same job (default: a fresh id)"},
      {"follow", "", "then stream the job like watch, and exit 1 unless it SUCCEEDED"},
      {"augment", "standard|light|none", "training augmentation (default standard)"},
      {"weight-decay", "F", "L2 (adam, sgd) or decoupled (adamw) weight decay (default 0)"},
      {"label-smoothing", "F", "cross-entropy label smoothing (default 0)"},
      {"class-weights", "balanced", "weight each class by N / (classes x its count)"},
      {"grad-clip", "F", "clip the global gradient L2 norm (default off)"},
      {"lr-schedule", "constant|step|cosine", "per-step learning-rate schedule (default constant)"},
      {"warmup-epochs", "N", "linear warm-up from 0 (default 0)"},
      {"lr-step-epochs", "N", "step schedule: epochs between steps (default epochs/3)"},
      {"lr-gamma", "F", "step schedule: factor at each step (default 0.1)"},
      {"momentum", "F", "SGD momentum (default 0.9)"},
      {"nesterov", "", "SGD with Nesterov momentum"},
      {"workers", "N", "train on N workers at once, data parallel (c10d); --batch-size stays the global batch "
                       "(default 1)"},
      {"sync-bn", "", "with --workers: BatchNorm statistics over the whole batch (default: each worker's share)"},
      {"unfreeze-at", "EPOCH", "second phase: from this epoch train with --finetune-freeze-depth (default off)"},
      {"finetune-freeze-depth", "N|all", "second phase: the new freeze depth"},
      {"finetune-lr-mult", "F", "second phase: learning-rate multiplier, with a fresh optimiser (default 0.1)"},
      {"early-stopping", "PATIENCE", "stop when val loss has not improved for this many epochs (default off)"},
      {"cache-features", "auto|on|off",
       "with frozen stages and --augment none, compute what they output once (default auto)"},
      {"cache-dtype", "float32|float16", "how that cache is stored; float16 halves it (default float32)"},
      {"on-bad-image", "fail|skip", "undecodable images fail the job, or are skipped and named (default fail)"},
      {"export", "best|last", "which epoch's weights are exported; best = lowest val loss (default best)"},
      {"color-jitter", "F", "with augment standard|light: ColorJitter(F, F, F) (default 0)"},
      {"rotation", "DEGREES", "with augment standard|light: a random rotation in [-DEGREES, DEGREES] (default 0)"},
      {"checkpoint-interval", "S",
       "seconds between mid-epoch checkpoints; every epoch end is checkpointed too; 0 = epoch ends only "
       "(default 300)"},
      {"mean", "R,G,B", "input normalisation mean (default: from the weights, else ImageNet)"},
      {"std", "R,G,B", "input normalisation std (default: from the weights, else ImageNet)"},
  };
}

const std::vector<Command>& Commands() {
  static const auto* kCommands = new std::vector<Command>{
      // name, section, arguments, flags, summary, description, handler
      {"submit", "Jobs", {}, SubmitFlags(), "validate a job and queue it",
       "The server checks the spec before queueing it and refuses a bad one with exit code 2, naming the "
       "field. Prints the job; with --follow prints 'submitted JOB' and streams it like watch.",
       &Submit},
      {"validate", "Jobs", {}, SubmitFlags(), "a dry run of submit: nothing is queued",
       "Reports class counts and imbalance, undecodable files (the first few named), image sizes, trainable "
       "and frozen parameters, the estimated seconds per epoch and the queue position.",
       &Validate},
      {"get", "Jobs", {{"JOB", "a job id"}}, {}, "show a job",
       "Its state, spec, metrics, model and error.", &GetJob},
      {"list", "Jobs", {}, {{"limit", "N", "at most this many jobs (default 100)"}, {"tenant", "TENANT", "admins: only this tenant's (default: every tenant; others always see their own)"}},
       "list jobs, newest first", "A TENANT column appears when the list spans tenants or --tenant is given.",
       &ListJobs},
      {"watch", "Jobs", {{"JOB", "a job id"}}, {{"from", "SEQ", "replay the events from this sequence number"}},
       "stream a job's events until it ends",
       "Text mode draws a live progress line and prints each epoch's summary; --output json writes one event "
       "per line and the final job last. Exits 0 if the job SUCCEEDED, 1 if it FAILED or was CANCELLED.",
       &WatchJob},
      {"cancel", "Jobs", {{"JOB", "a job id"}}, {}, "cancel a queued or running job",
       "A queued job is cancelled at once, a running one at its next training step.", &CancelJob},
      {"report", "Jobs", {{"JOB", "a finished job's id"}},
       {{"out", "DIR", "the folder to write report.html and the charts' PNGs to (created if needed)", true}},
       "a finished job's report: curves, confusion matrix, mistakes",
       "Writes DIR/report.html, one self-contained page (images embedded, no scripts, nothing fetched): loss "
       "and accuracy per epoch, the per-step loss, the learning rate, the confusion matrix, per-class "
       "precision, recall and F1, the most confused pairs, misclassified images, the spec and the timings; "
       "and each chart as DIR/NAME.png. The per-class figures come from the test split, or from validation "
       "when the dataset has none. A queued or running job is refused (exit 2); a FAILED or CANCELLED one gets "
       "what it recorded. Prints the files written; --output json prints them as JSON.",
       &Report},
      {"models list", "Models", {}, {{"tenant", "TENANT", "admins: only this tenant's (default: every tenant; others always see their own)"}}, "list trained models", "", &ListModels},
      {"models get", "Models", {{"MODEL", "a model id"}}, {}, "show one model's record, as JSON", "", &GetModel},
      {"models download", "Models", {{"MODEL", "a model id"}},
       {{"dir", "DIR", "the folder to write the model's files to (created if needed)"},
        {"triton-repo", "REPO",
         "lay the model out as a Triton model repository: REPO/NAME/1/model.pt (pytorch_libtorch) and "
         "REPO/NAME-onnx/1/model.onnx (onnxruntime_onnx) where the model has one, each with config.pbtxt and "
         "labels.txt"},
        {"name", "NAME", "with --triton-repo: the Triton model name (default: the model id)"},
        {"force", "", "with --triton-repo: replace an existing REPO/NAME and REPO/NAME-onnx"}},
       "download a model's files, or a Triton model repository",
       "Writes model.pt (TorchScript), metadata.json, the model card README.md and model.onnx where the model "
       "has one, checking each file's sha256, and prints their paths. Needs --dir, --triton-repo or both. "
       "--triton-repo refuses an existing REPO/NAME or REPO/NAME-onnx unless --force, and changes nothing in "
       "REPO until every file has arrived intact. Its config.pbtxt files name model.pt's input INPUT__0 and "
       "output OUTPUT__0 (Triton's convention for TorchScript), model.onnx's input, logits and features, all "
       "TYPE_FP32 with dims [3, S, S], [classes] and [features], and a dynamic batch up to 64.",
       &DownloadModel},
      {"models delete", "Models", {{"MODEL", "a model id"}}, {}, "delete a model", "", &DeleteModel},
      {"predict", "Models", {{"MODEL", "a model id"}, {"IMAGE...", "image files"}},
       {{"top-k", "N", "classes to show per image (default 5)"}}, "top-k classes of images, run on the server",
       "", &Predict},
      {"datasets upload", "Datasets", {{"DIR|ARCHIVE", "a folder, or a .tar, .tar.gz or .zip file"}},
       {{"name", "NAME", "the dataset's name; jobs use it as --dataset dataset://NAME", true},
        {"sha256", "HEX", "refuse the upload unless the archive has this digest"},
        {"format", "tar|tar.gz|zip", "the archive's format, where its name does not say"}},
       "upload a dataset", "A DIR is packed into a tar first; an ARCHIVE is sent as it is.", &UploadDataset},
      {"datasets list", "Datasets", {}, {{"tenant", "TENANT", "admins: only this tenant's (default: every tenant; others always see their own)"}}, "list uploaded datasets",
       "Name, sha256, layout, classes, images, size and creation time.", &ListDatasets},
      {"datasets get", "Datasets", {{"NAME", "a dataset name"}},
       {{"tenant", "TENANT", "admins: the tenant whose dataset NAME is (default: your own; names are per tenant)"}},
       "show one uploaded dataset", "Its state (EXTRACTING, READY or FAILED, with the reason), layout and sizes.",
       &GetDataset},
      {"datasets delete", "Datasets", {{"NAME", "a dataset name"}},
       {{"tenant", "TENANT", "admins: the tenant whose dataset NAME is (default: your own; names are per tenant)"}},
       "delete an uploaded dataset",
       "Refused while a queued or running job names it.", &DeleteDataset},
      {"auth new-token", "Auth", {},
       {{"name", "NAME", "the identity's name, shown in logs and the audit log", true},
        {"tenant", "TENANT", "its tenant", true},
        {"role", "admin|user|viewer|worker", "what it may do (docs/operations.md has the table)", true}},
       "mint a token and its --auth-file entry",
       "Prints a fresh random token (32 bytes from /dev/urandom, base64url) on the first line and, on the "
       "second, the identity to add to finetuned's --auth-file, which keeps only the token's SHA-256. Nothing is "
       "sent to the server: add the line, then send finetuned SIGHUP.",
       &NewToken},
      {"health", "Other", {}, {}, "check the server (grpc.health.v1)", "Prints SERVING.", &Health},
      {"help", "Other", {{"[COMMAND...]", "a command, such as submit or models download"}}, {},
       "this text, or a command's arguments and flags", "", &Help},
  };
  return *kCommands;
}

}  // namespace
}  // namespace ft::client::ftctl

int main(int argc, char** argv) {
  return ft::client::ftctl::Run(ft::client::ftctl::Commands(), argc, argv);
}
