"""`ftctl report`: real jobs (a test split, no test split, a failed one, a
cancelled one) on a real server and worker, their reports rendered by
headless Chromium (Debian's `chromium`), and the numbers in the rendered DOM
checked against the jobs' records; the chart PNGs and the screenshot are
checked with PIL. Set FT_REPORT_KEEP=DIR to keep the reports and
screenshots for a person to look at."""
import base64
import html.parser
import io
import json
import os
import shutil
import subprocess
import tempfile
import unittest

import harness

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHARTS = ["loss.png", "accuracy.png", "step_loss.png", "learning_rate.png", "confusion.png", "per_class.png"]
# The class names: one needs escaping in HTML.
CLASSES = ["circle", "square", "tri & <angle>"]


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, dict(attrs), parent, [], ""

    def all_text(self):
        return self.text + "".join(c.all_text() for c in self.children)

    def find_all(self, pred):
        for c in self.children:
            if pred(c):
                yield c
            yield from c.find_all(pred)

    def by_id(self, id_):
        return next(self.find_all(lambda n: n.attrs.get("id") == id_), None)

    def by_tag(self, tag):
        return list(self.find_all(lambda n: n.tag == tag))


class Dom(html.parser.HTMLParser):
    """The DOM Chromium dumped, as a tree of Nodes."""
    VOID = {"img", "meta", "br", "hr", "input", "link", "source", "area", "base", "col", "wbr"}

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.cur)
        self.cur.children.append(node)
        if tag not in self.VOID:
            self.cur = node

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        # Text after a child goes on a text node of its own, in order.
        if self.cur.children:
            t = Node("#text", {}, self.cur)
            t.text = data
            self.cur.children.append(t)
        else:
            self.cur.text += data


def rows(table):
    return [[c.all_text().strip() for c in tr.children if c.tag in ("td", "th")] for tr in table.by_tag("tr")]


def f4(v):
    return f"{v:.4f}"


class ReportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-report-")
        cls.root = os.path.join(cls.tmp, "data")
        cls.keep = os.environ.get("FT_REPORT_KEEP")
        # A test split, with a few images under the wrong label so that the
        # gallery has mistakes whatever the model learns.
        cls.data = cls.shapes("shapes", with_test=True)
        for i in range(3):
            os.rename(os.path.join(cls.data, "test", CLASSES[0], f"{i:04d}.png"),
                      os.path.join(cls.data, "test", CLASSES[1], f"swapped{i}.png"))
        cls.no_test = cls.shapes("shapes_nt", with_test=False)
        cls.bad_weights = os.path.join(cls.root, "truncated.pth")
        with open(cls.bad_weights, "wb") as f:
            f.write(b"PK\x03\x04" + os.urandom(2000))
        cls.server = harness.Server(os.path.join(cls.tmp, "var"), [cls.root]).start()
        common = ["--backbone=resnet18", "--image-size=32", "--batch-size=8", "--seed=3"]
        r, cls.events, cls.job = cls.server.submit(f"--dataset=file://{cls.data}", "--epochs=3", "--name=report-test",
                                                   *common)
        assert r.returncode == 0, r.stderr + cls.server.log()
        r, cls.val_events, cls.val_job = cls.server.submit(f"--dataset=file://{cls.no_test}", "--epochs=2", *common)
        assert r.returncode == 0, r.stderr + cls.server.log()
        r, _, cls.failed_job = cls.server.submit(f"--dataset=file://{cls.no_test}", "--epochs=2",
                                                 f"--weights=file://{cls.bad_weights}", *common)
        assert r.returncode == 1 and cls.failed_job["state"] == "FAILED", r.stdout + r.stderr

    @classmethod
    def shapes(cls, name, with_test):
        path = harness.make_imagefolder(os.path.join(cls.root, name), classes=3, train_per_class=16,
                                        val_per_class=8, size=32)
        if with_test:
            t = harness.make_imagefolder(os.path.join(cls.root, name + "_t"), classes=3, train_per_class=8,
                                         val_per_class=0, size=32, seed=9, split=False)
            shutil.move(t, os.path.join(path, "test"))
        for split in ("train", "val", "test"):
            for i, c in enumerate(CLASSES):
                d = os.path.join(path, split, f"class_{i}")
                if os.path.isdir(d):
                    os.rename(d, os.path.join(path, split, c))
        return path

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def report(self, job_id, name):
        out = os.path.join(self.tmp, "reports", name)
        r = self.server.ftctl("report", job_id, f"--out={out}", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        summary = json.loads(r.stdout)
        self.assertEqual(summary["report"], os.path.join(out, "report.html"))
        if self.keep:
            shutil.copytree(out, os.path.join(self.keep, name), dirs_exist_ok=True)
        return out, summary

    def chromium(self, page, *args):
        profile = tempfile.mkdtemp(prefix="chromium-", dir=self.tmp)
        r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                            f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND", *args,
                            "file://" + page],
                           capture_output=True, text=True, timeout=180, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        return r

    def dom(self, page):
        return Dom(self.chromium(page, "--dump-dom").stdout).root

    def screenshot(self, page, name):
        from PIL import Image
        shot = os.path.join(self.tmp, f"{name}.png")
        self.chromium(page, f"--screenshot={shot}", "--window-size=1200,3000", "--hide-scrollbars")
        if self.keep:
            shutil.copy(shot, os.path.join(self.keep, f"{name}-screenshot.png"))
        img = Image.open(shot)
        self.assertEqual(img.size, (1200, 3000))
        # A page of text, charts and thumbnails, not a blank or an error page.
        self.assertGreater(len(img.convert("RGB").getcolors(1 << 24)), 2000)

    def check_self_contained(self, page):
        with open(page) as f:
            text = f.read()
        doc = Dom(text).root
        self.assertEqual(doc.by_tag("script"), [])
        self.assertEqual(doc.by_tag("link"), [])
        for img in doc.by_tag("img"):
            self.assertTrue(img.attrs["src"].startswith("data:image/"), img.attrs["src"][:60])
        self.assertNotIn("http://", text)
        self.assertNotIn("https://", text)
        self.assertNotIn("url(", text)
        return doc

    def check_pngs(self, out, names):
        from PIL import Image
        for name in names:
            with self.subTest(chart=name):
                img = Image.open(os.path.join(out, name))
                self.assertEqual(img.format, "PNG")
                self.assertGreaterEqual(img.size[0], 600)
                self.assertGreaterEqual(img.size[1], 300)
                colours = img.convert("RGB").getcolors(1 << 24)
                self.assertGreater(len(colours), 40, "a chart of few colours is blank")
                white = max(colours)[1] == (255, 255, 255)
                self.assertTrue(white, "a chart's background is white")

    def check_evaluation(self, doc, per_class, confusion, misclassified):
        n = len(per_class)
        names = [c["name"] for c in per_class]
        self.assertEqual(names, CLASSES)
        table = rows(doc.by_id("per-class"))
        self.assertEqual(table[0], ["class", "precision", "recall", "F1", "support"])
        self.assertEqual(table[1:], [[c["name"], f4(c["precision"]), f4(c["recall"]), f4(c["f1"]),
                                      str(c["support"])] for c in per_class])
        cells = rows(doc.by_id("confusion"))
        self.assertEqual(cells[0][1:], CLASSES)
        self.assertEqual([r[0] for r in cells[1:]], CLASSES)
        self.assertEqual([int(v) for r in cells[1:] for v in r[1:]], [int(v) for v in confusion])
        # The most confused pairs: the largest off-diagonal cells, in order.
        pairs = sorted(((int(confusion[i * n + j]), names[i], names[j]) for i in range(n) for j in range(n)
                        if i != j and int(confusion[i * n + j]) > 0), key=lambda p: -p[0])
        shown = rows(doc.by_id("confused-pairs"))[1:] if pairs else []
        self.assertEqual([int(r[2]) for r in shown], [p[0] for p in pairs][:10])
        self.assertEqual({(r[0], r[1]) for r in shown}, {(p[1], p[2]) for p in pairs[:10]})
        # One figure per recorded mistake, with its labels and path.
        gallery = doc.by_id("gallery")
        figures = gallery.by_tag("figure") if misclassified else []
        self.assertEqual(len(figures), len(misclassified))
        for fig, m in zip(figures, misclassified):
            text = fig.all_text()
            self.assertIn(f"true: {names[m['true_class']]}", text)
            self.assertIn(f"predicted: {names[m['predicted_class']]} ({m['confidence']:.2f})", text)
            self.assertIn(m["path"], text)
            self.assertTrue(fig.by_tag("img")[0].attrs["src"].startswith("data:image/jpeg;base64,"))

    def check_misclassified(self, entries, confusion, n, dataset, split_dir):
        from PIL import Image
        wrong = sum(int(confusion[i * n + j]) for i in range(n) for j in range(n) if i != j)
        self.assertEqual(len(entries), min(24, wrong))
        total = 0
        per_cell = {}
        for m in entries:
            self.assertNotEqual(m["true_class"], m["predicted_class"])
            self.assertTrue(m["path"].startswith(split_dir + "/" + CLASSES[m["true_class"]] + "/"), m["path"])
            self.assertTrue(os.path.isfile(os.path.join(dataset, m["path"])), m["path"])
            self.assertGreater(m["confidence"], 1.0 / n - 1e-6)
            self.assertLessEqual(m["confidence"], 1.0)
            jpeg = base64.b64decode(m["thumbnail_jpeg"])
            total += len(jpeg)
            img = Image.open(io.BytesIO(jpeg))
            self.assertEqual(img.format, "JPEG")
            self.assertEqual(max(img.size), 96)
            key = (m["true_class"], m["predicted_class"])
            per_cell[key] = per_cell.get(key, 0) + 1
        for (t, p), count in per_cell.items():
            self.assertLessEqual(count, int(confusion[t * n + p]))
        self.assertLess(total, 200 * 1024)

    def test_report_of_a_job_with_a_test_split(self):
        job = self.server.ftctl("get", self.job["id"], json_output=True)
        self.assertEqual(job.returncode, 0, job.stderr)
        job = json.loads(job.stdout)
        m = job["metrics"]
        self.assertTrue(m["has_test"])
        self.check_misclassified(m["test_misclassified"], m["test_confusion"], 3, self.data, "test")
        self.assertGreaterEqual(len(m["test_misclassified"]), 1, "3 test images carry the wrong label")
        self.assertEqual(m["val_per_class"], [])

        out, summary = self.report(job["id"], "with-test")
        self.assertEqual(summary["state"], "SUCCEEDED")
        self.assertEqual(summary["split"], "test")
        self.assertEqual(summary["charts"], [os.path.join(out, c) for c in CHARTS])
        self.check_pngs(out, CHARTS)
        page = summary["report"]
        self.check_self_contained(page)

        doc = self.dom(page)
        field = {n.attrs["data-field"]: n.all_text().strip()
                 for n in doc.find_all(lambda n: "data-field" in n.attrs and n.parent.attrs.get("class") == "card")}
        self.assertEqual(field["val_accuracy"], f4(m["val_accuracy"]))
        self.assertEqual(field["test_accuracy"], f4(m["test_accuracy"]))
        self.assertEqual(field["test_top5_accuracy"], f4(m["test_top5_accuracy"]))
        self.assertEqual(field["epochs"], "3 / 3")
        self.assertIn("report-test", doc.by_tag("h1")[0].all_text())
        # The per-epoch table against the epoch events.
        epochs = [e["epoch"] for e in self.events if "epoch" in e]
        table = rows(doc.by_id("epochs"))[1:]
        self.assertEqual([r[0] for r in table], ["1", "2", "3"])
        self.assertEqual([r[4] for r in table], [f4(e["val_accuracy"]) for e in epochs])
        self.assertEqual([r[1] for r in table], [f4(e["train_loss"]) for e in epochs])
        # The per-step curve is each step's own loss and rate: 48 images in
        # batches of 8 are 6 steps an epoch, whose mean is the epoch's loss.
        for e in epochs:
            self.assertEqual(int(e["steps"]), 6)  # an int64: a string in JSON
            self.assertEqual(e.get("steps_per_point", 1), 1)
            self.assertEqual(len(e["step_losses"]), 6)
            self.assertEqual(len(e["step_learning_rates"]), 6)
            self.assertAlmostEqual(sum(e["step_losses"]) / 6, e["train_loss"], places=4)
            self.assertAlmostEqual(e["step_learning_rates"][-1], e["learning_rate"], places=7)
        self.assertIn("every training step", doc.by_id("step-note").all_text())
        self.check_evaluation(doc, m["test_per_class"], m["test_confusion"], m["test_misclassified"])
        self.assertIsNotNone(next(doc.find_all(lambda n: n.attrs.get("data-split") == "test"), None))
        # The spec and the timings.
        spec = dict(r for r in rows(doc.by_id("spec-table")))
        self.assertEqual(spec["backbone"], "resnet18")
        self.assertEqual(spec["epochs"], "3")
        self.assertEqual(spec["dataset_uri"], f"file://{self.data}")
        timings = dict(r for r in rows(doc.by_id("timings-table")))
        self.assertTrue(timings["submitted"].startswith(job["create_time"][:19]), (timings, job["create_time"]))
        self.assertIn("images/s", timings["training throughput"])
        # Every image is a data: URI that Chromium decoded (a broken one has
        # no natural size; the screenshot would show its icon).
        self.screenshot(page, "with-test")

        # A list is a summary: no thumbnails; the model's record has none either.
        listed = json.loads(self.server.ftctl("list", json_output=True).stdout)["jobs"]
        mine = next(j for j in listed if j["id"] == job["id"])
        self.assertEqual(len(mine["metrics"]["test_misclassified"]), len(m["test_misclassified"]))
        self.assertTrue(all(e["thumbnail_jpeg"] == "" for e in mine["metrics"]["test_misclassified"]))
        model = json.loads(self.server.ftctl("models", "get", job["model_id"]).stdout)
        self.assertEqual(model["metrics"]["test_misclassified"], [])
        self.assertEqual(len(model["metrics"]["test_per_class"]), 3)

    def test_report_without_a_test_split_uses_validation(self):
        job = json.loads(self.server.ftctl("get", self.val_job["id"], json_output=True).stdout)
        m = job["metrics"]
        self.assertFalse(m["has_test"])
        self.assertEqual(len(m["val_per_class"]), 3)
        self.assertEqual(sum(int(c) for c in m["val_confusion"]), 24)
        self.assertEqual(sum(int(c["support"]) for c in m["val_per_class"]), 24)
        # The exported epoch's val accuracy is the confusion matrix's diagonal.
        diagonal = sum(int(m["val_confusion"][i * 3 + i]) for i in range(3))
        self.assertAlmostEqual(diagonal / 24, m["val_accuracy"], places=5)
        # ...taken from that epoch's own validation, not from a second pass.
        said = [e["log"]["message"] for e in self.val_events if "log" in e]
        described = [t for t in said if "no test split: per-class metrics" in t]
        self.assertEqual(len(described), 1, said)
        self.assertIn("of the exported epoch on the 24 validation images", described[0])
        self.assertNotIn("evaluated again", described[0])
        self.check_misclassified(m["val_misclassified"], m["val_confusion"], 3, self.no_test, "val")

        out, summary = self.report(job["id"], "no-test")
        self.assertEqual(summary["split"], "val")
        page = summary["report"]
        self.check_self_contained(page)
        doc = self.dom(page)
        note = next(doc.find_all(lambda n: n.attrs.get("data-split") == "val"))
        self.assertIn("no test split", note.all_text())
        self.check_evaluation(doc, m["val_per_class"], m["val_confusion"], m["val_misclassified"])
        self.assertNotIn("test accuracy", doc.by_id("summary").all_text())

    def test_report_of_a_failed_job(self):
        out, summary = self.report(self.failed_job["id"], "failed")
        self.assertEqual(summary["state"], "FAILED")
        self.assertEqual(summary["charts"], [])
        self.assertEqual(summary["split"], "")
        doc = self.dom(summary["report"])
        banner = next(doc.find_all(lambda n: n.attrs.get("data-field") == "error"))
        self.assertIn("FAILED", banner.all_text())
        self.assertIn(self.failed_job["error"][:40], banner.all_text())
        self.assertIn("No epoch finished", doc.by_id("training").parent.all_text())
        self.assertIsNotNone(doc.by_id("no-evaluation"))

    def test_refusals(self):
        r = self.server.ftctl("report", "job-does-not-exist", f"--out={self.tmp}/nope")
        self.assertEqual(r.returncode, 2)
        self.assertIn("NOT_FOUND", r.stderr)
        self.assertIn("job-does-not-exist", r.stderr)
        # An --out that cannot be a folder is named.
        blocker = os.path.join(self.tmp, "a-file")
        open(blocker, "w").close()
        r = self.server.ftctl("report", self.job["id"], f"--out={blocker}/sub")
        self.assertEqual(r.returncode, 2)
        self.assertIn(blocker, r.stderr)
        r = self.server.ftctl("report", self.job["id"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("--out", r.stderr)
        # A job that has not finished is refused, then reported once cancelled.
        s = self.server.ftctl("submit", f"--dataset=file://{self.no_test}", "--backbone=resnet18", "--image-size=32",
                              "--epochs=500", json_output=True)
        self.assertEqual(s.returncode, 0, s.stderr)
        job_id = json.loads(s.stdout)["id"]
        r = self.server.ftctl("report", job_id, f"--out={self.tmp}/unfinished")
        self.assertEqual(r.returncode, 2)
        self.assertRegex(r.stderr, f"job {job_id} is (QUEUED|RUNNING): a report is made of a finished job")
        self.assertEqual(self.server.ftctl("cancel", job_id).returncode, 0)
        self.assertTrue(harness.wait_for(
            lambda: json.loads(self.server.ftctl("get", job_id, json_output=True).stdout)["state"] == "CANCELLED",
            120))
        out, summary = self.report(job_id, "cancelled")
        self.assertEqual(summary["state"], "CANCELLED")
        with open(summary["report"]) as f:
            self.assertIn("This job ended CANCELLED", f.read())


if __name__ == "__main__":
    unittest.main()
