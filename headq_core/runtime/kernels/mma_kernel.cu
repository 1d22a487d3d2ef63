extern "C" __global__ void __launch_bounds__(NW * 32, MINB)
headq_decode_mma(const Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int split = blockIdx.x * NW + warp;
  if (split >= p.S) return;
  const int bh = blockIdx.y;
  const int b = bh / p.H, h = bh % p.H;
  int vis = p.first;
#if ROW_START
  vis = max(vis, p.row_start[b]);
#endif
  // query fragments (rows = query heads of this KV head), channels 32t + 4kk .. + 3, times qk_scale
  u32 qh[8][4];
  {
    const long long qrow0 = (long long)bh * GQ;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      int head = g + 8 * r;
      const u32* src = (const u32*)(p.q + (qrow0 + (head < GQ ? head : 0)) * D + 32 * t);
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          u32 w = src[2 * kk + e];
          float lo = in_to_float((u16)(w & 0xffffu)) * p.qk_scale;
          float hi = in_to_float((u16)(w >> 16)) * p.qk_scale;
          u32 v = head < GQ ? pack_half2(lo, hi) : 0u;
          if (r == 0) qh[kk][2 * e] = v;
          else qh[kk][2 * e + 1] = v;
        }
      }
    }
  }
  State st;
#pragma unroll
  for (int r = 0; r < ROWS; ++r) { st.m[r] = NEG_INF; st.l[r] = 0.f; }
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int e = 0; e < 2 * ROWS; ++e) st.o[j][e] = 0.f;

  if (split < p.n_qsplits) {
    u32 qu[4] = {0u, 0u, 0u, 0u};
#if RANK > 0
    {  // qu = sign * qh U: C fragment [row g (g+8)][rank 2t, 2t+1] is the side mma's A fragment
#pragma unroll
      for (int half = 0; half < RANKP / 8; ++half) {
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
        const int rk = 8 * half + g;
        const float* urow = p.u + (long long)h * D * RANK + (rk < RANK ? rk : 0);
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
          int c = 32 * t + 4 * kk;
          float u0 = urow[(c + 0) * RANK], u1 = urow[(c + 1) * RANK];
          float u2 = urow[(c + 2) * RANK], u3 = urow[(c + 3) * RANK];
          bool ok = rk < RANK;
          mma(acc, qh[kk], ok ? pack_half2(u0, u1) : 0u, ok ? pack_half2(u2, u3) : 0u);
        }
        qu[2 * half] = pack_half2(acc[0] * p.sign, acc[1] * p.sign);
        qu[2 * half + 1] = ROWS == 2 ? pack_half2(acc[2] * p.sign, acc[3] * p.sign) : 0u;
      }
    }
#endif
    stream_chunks(p, bh, split, vis, smem + warp * (NSTAGE * STAGE_BYTES), lane,
                  [&](const unsigned char* stg, int c0, int hi) {
                    float s[8][4];
                    qk_quantized(s, qh, qu, stg, g, t, lane);
                    u32 pa[4][4];
                    softmax_chunk(s, st, c0, vis, hi, t, p.cap2, pa);
                    pv_quantized(st, pa, stg, g, t);
                  });
  } else {
    const long long roff = (long long)bh;
    const int lo = (split - p.n_qsplits) * CHUNK;
    const int hi = min(p.R, lo + CHUNK);
    if (vis - p.N < hi)
      residual_chunk(st, qh, p.kr + roff * p.s_kr, p.vr + roff * p.s_vr, lo, hi, vis - p.N, g, t, p.cap2);
  }
  // finish: row sums over the quad, then this lane's 2 x 16 output channels 32t + j, 32t + 16 + j
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    st.l[r] += __shfl_xor_sync(0xffffffffu, st.l[r], 1);
    st.l[r] += __shfl_xor_sync(0xffffffffu, st.l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int head = g + 8 * r;
    if (head >= GQ) continue;
    const long long row = (long long)bh * GQ + head;
    const float inv = st.l[r] > 0.f ? 1.0f / st.l[r] : 0.0f;
    if (p.S == 1) {
      u16* dst = p.out + row * D;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        float a = st.o[j][2 * r] * inv, c = st.o[j][2 * r + 1] * inv;
#if RES_BF16
        u32 ua = __float_as_uint(a), uc = __float_as_uint(c);
        ua += 0x7fffu + ((ua >> 16) & 1u); uc += 0x7fffu + ((uc >> 16) & 1u);  // round to nearest even
        dst[32 * t + j] = (u16)(ua >> 16); dst[32 * t + 16 + j] = (u16)(uc >> 16);
#else
        u32 hv = pack_half2(a, c);
        dst[32 * t + j] = (u16)(hv & 0xffffu); dst[32 * t + 16 + j] = (u16)(hv >> 16);
#endif
      }
    } else {
      float* dst = p.o_part + (row * p.S + split) * D;
#pragma unroll
      for (int j = 0; j < 16; j += 4) {
        *(float4*)(dst + 32 * t + j) = make_float4(st.o[j][2 * r] * inv, st.o[j + 1][2 * r] * inv,
                                                   st.o[j + 2][2 * r] * inv, st.o[j + 3][2 * r] * inv);
        *(float4*)(dst + 32 * t + 16 + j) =
            make_float4(st.o[j][2 * r + 1] * inv, st.o[j + 1][2 * r + 1] * inv,
                        st.o[j + 2][2 * r + 1] * inv, st.o[j + 3][2 * r + 1] * inv);
      }
      if (t == 0) p.lse[row * p.S + split] = st.l[r] > 0.f ? st.m[r] + lg2(st.l[r]) : NEG_INF;
    }
  }
}
