// Folders for unit tests: fresh per test, and tiny datasets in them.
#ifndef FT_TESTS_UNIT_TEST_DIRS_H_
#define FT_TESTS_UNIT_TEST_DIRS_H_

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace ft::testing {

// <tmp>/<prefix>-<pid>-<test name>, emptied. A parameterised test's name
// ("Test/param") gives one folder, with '/' as '-'.
inline std::filesystem::path FreshTestDir(const std::string& prefix) {
  std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  std::replace(name.begin(), name.end(), '/', '-');
  const auto dir = std::filesystem::temp_directory_path() / (prefix + "-" + std::to_string(::getpid()) + "-" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// A flat ImageFolder <dir>/<class>/<i>.png of placeholder files: enough for
// the layout scan, which reads names only.
inline void WriteTinyImageFolder(const std::filesystem::path& dir, const std::vector<std::string>& classes = {"a", "b"},
                                 int per_class = 4) {
  for (const auto& c : classes) {
    std::filesystem::create_directories(dir / c);
    for (int i = 0; i < per_class; ++i) std::ofstream(dir / c / (std::to_string(i) + ".png")) << "x";
  }
}

// A test with a fresh folder of its own in dir_, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = FreshTestDir("ft-test"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path dir_;
};

}  // namespace ft::testing

#endif  // FT_TESTS_UNIT_TEST_DIRS_H_
