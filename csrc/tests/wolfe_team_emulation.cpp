// Checks the team-parallel paths of common/wolfe.h without a GPU: a team of 32 CPU
// threads with a barrier stands in for the CUDA warp (WarpTeam in cuda/common.cuh: the
// same interface, the same "every member gets the same reduced value" contract), and
// its results are compared with the serial team's on random problems (some with the
// class itself marked -1, some nearly degenerate, some warm-started from the serial
// corral). Built and run by python_tests/test_wolfe_core.py. Exit code 0: all agree.
//   c++ -std=c++17 -O2 -pthread -Icsrc csrc/tests/wolfe_team_emulation.cpp
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>
#include "common/wolfe.h"
using namespace gnc;

// A reusable barrier for `count` threads (C++17: no std::barrier).
struct Barrier {
  std::mutex m;
  std::condition_variable cv;
  int count = 32;
  int waiting = 0;
  long generation = 0;
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lk(m);
    const long gen = generation;
    if (++waiting == count) {
      waiting = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lk, [&] { return generation != gen; });
    }
  }
};

struct Shared {
  explicit Shared(int n) { bar.count = n; }
  Barrier bar;
  double dv[32];  // members <= 32
  int64_t iv[32];
  int bv[32];
};

struct ThreadTeam {
  static constexpr bool kSerial = false;
  int lane;
  int members;
  Shared* sh;
  int rank() const { return lane; }
  int size() const { return members; }
  bool leader() const { return lane == 0; }
  void sync() const { sh->bar.arrive_and_wait(); }
  double total(double v) const {
    sync(); sh->dv[lane] = v; sync();
    double t = 0; for (int i = 0; i < members; ++i) t += sh->dv[i];
    sync(); return t;
  }
  int count(int v) const {
    sync(); sh->bv[lane] = v; sync();
    int t = 0; for (int i = 0; i < members; ++i) t += sh->bv[i];
    sync(); return t;
  }
  bool any(bool v) const { return count(v ? 1 : 0) > 0; }
  double max(double v) const {
    sync(); sh->dv[lane] = v; sync();
    double t = sh->dv[0]; for (int i = 1; i < members; ++i) t = std::fmax(t, sh->dv[i]);
    sync(); return t;
  }
  int64_t min_index(int64_t v) const {
    sync(); sh->iv[lane] = v; sync();
    int64_t t = sh->iv[0]; for (int i = 1; i < members; ++i) t = std::min(t, sh->iv[i]);
    sync(); return t;
  }
  void argmin(double& v, int64_t& j) const {
    sync(); sh->dv[lane] = v; sh->iv[lane] = j; sync();
    double bv = sh->dv[0]; int64_t bj = sh->iv[0];
    for (int i = 1; i < members; ++i)
      if (sh->dv[i] < bv || (sh->dv[i] == bv && sh->iv[i] < bj)) { bv = sh->dv[i]; bj = sh->iv[i]; }
    sync(); v = bv; j = bj;
  }
};

struct Buf {
  std::vector<double> g, L, lam, alpha, z, c, proj, wt; std::vector<int64_t> S, sup;
  double dist; int64_t iters, status;
  Buf(int64_t n, int64_t d) {
    int64_t ld = std::min(n, d + 1) + 1;
    g.assign(n, 0); L.assign(ld * ld, 0); lam.assign(ld, 0); alpha.assign(ld, 0); z.assign(ld, 0); c.assign(ld, 0);
    S.assign(ld, 0); proj.assign(d, 0); sup.assign(d + 1, 0); wt.assign(d + 1, 0);
  }
  wolfe::Scratch scratch(int64_t n, int64_t d) { return {g.data(), L.data(), lam.data(), alpha.data(), z.data(), c.data(), S.data(), std::min(n, d + 1) + 1}; }
  wolfe::Output out(int64_t d) { return {proj.data(), &dist, sup.data(), wt.data(), d + 1, &iters, &status}; }
};

int main(int argc, char** argv) {
  const int trials = argc > 1 ? std::atoi(argv[1]) : 60;
  const int members = argc > 2 ? std::atoi(argv[2]) : 32;  // 32: a warp; fewer: faster
  std::mt19937_64 rng(1);
  std::normal_distribution<double> nd;
  int bad = 0, total = 0; double worst = 0;
  for (int trial = 0; trial < trials; ++trial) {
    const int64_t d = 2 + trial % 9, K = 8 + (trial * 7) % 70;
    std::vector<double> W(K * d);
    for (int64_t i = 0; i < K; ++i) {
      double s = 0; for (int64_t t = 0; t < d; ++t) { W[i * d + t] = nd(rng); s += W[i*d+t] * W[i*d+t]; }
      s = std::sqrt(s); for (int64_t t = 0; t < d; ++t) W[i * d + t] /= s;
      if (trial % 5 == 0 && d > 2) W[i * d + d - 1] *= 1e-6;  // nearly degenerate
    }
    for (int64_t k = 0; k < K; k += 3) {
      std::vector<int64_t> ids; for (int64_t j = 0; j < K; ++j) ids.push_back(j == k && trial % 2 ? -1 : j);
      const int64_t n = K;
      std::vector<double> G(n * n);
      for (int64_t i = 0; i < n; ++i) for (int64_t j = 0; j < n; ++j) {
        double s = 0; int64_t a = ids[i] < 0 ? 0 : ids[i], b = ids[j] < 0 ? 0 : ids[j];
        for (int64_t t = 0; t < d; ++t) s += (W[a*d+t] - W[k*d+t]) * (W[b*d+t] - W[k*d+t]);
        G[i * n + j] = s;
      }
      wolfe::HullProblem<double> P{W.data(), d, d, k, ids.data(), n, G.data(), n};
      wolfe::WarmStart ws{nullptr, nullptr, 0};
      Buf a(n, d), b(n, d);
      wolfe::solve(wolfe::SerialTeam{}, P, ws, 1e-12, 10000, a.scratch(n, d), a.out(d));
      Shared sh(members);
      std::vector<std::thread> th;
      auto sc = b.scratch(n, d); auto ou = b.out(d);
      for (int l = 0; l < members; ++l) th.emplace_back([&, l] { wolfe::solve(ThreadTeam{l, members, &sh}, P, ws, 1e-12, 10000, sc, ou); });
      for (auto& t : th) t.join();
      // warm start from the serial result's corral
      Buf c2(n, d);
      wolfe::WarmStart ws2{a.sup.data(), a.wt.data(), d + 1};
      { Shared sh2(members); std::vector<std::thread> th2; auto sc2 = c2.scratch(n, d); auto ou2 = c2.out(d);
        for (int l = 0; l < members; ++l) th2.emplace_back([&, l] { wolfe::solve(ThreadTeam{l, members, &sh2}, P, ws2, 1e-12, 10000, sc2, ou2); });
        for (auto& t : th2) t.join(); }
      const double e = std::fabs(a.dist - b.dist) / std::max(a.dist, 1e-300);
      const double e2 = std::fabs(a.dist - c2.dist) / std::max(a.dist, 1e-300);
      worst = std::max(worst, std::max(e, e2));
      ++total;
      if (e > 1e-9 || e2 > 1e-9 || a.status != b.status) { ++bad; if (bad < 5) printf("K=%lld d=%lld k=%lld serial %.17g (st %lld, it %lld) team %.17g (st %lld, it %lld) warm %.17g\n", (long long)K, (long long)d, (long long)k, a.dist, (long long)a.status, (long long)a.iters, b.dist, (long long)b.status, (long long)b.iters, c2.dist); }
    }
  }
  printf("%d problems, %d differ beyond 1e-9 or in status; worst relative difference %.3g\n", total, bad, worst);
  return bad != 0;
}
