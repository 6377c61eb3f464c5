package tags

import (
	"math"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
)

// The predicted-value labels use the standard BG/NBD model (Fader, Hardie
// and Lee, "Counting your customers the easy way", 2005) for the number of
// future purchases and the Gamma-Gamma model (Fader, Hardie and Lee, 2005)
// for their average value, on RFM inputs: x repeat purchase days, t_x the
// age at the last purchase, T the age now (all in the same time unit).

// BGNBDExpected is E[Y(t) | x, t_x, T]: the expected purchases in the next
// t time units.
func BGNBDExpected(r, alpha, a, b, x, tx, T, t float64) float64 {
	if t <= 0 {
		return 0
	}
	z := t / (alpha + T + t)
	num := (a + b + x - 1) / (a - 1) * (1 - math.Pow((alpha+T)/(alpha+T+t), r+x)*hyp2f1(r+x, b+x, a+b+x-1, z))
	den := 1.0
	if x > 0 {
		den += a / (b + x - 1) * math.Pow((alpha+T)/(alpha+tx), r+x)
	}
	return num / den
}

// BGNBDPAlive is P(alive | x, t_x, T).
func BGNBDPAlive(r, alpha, a, b, x, tx, T float64) float64 {
	if x == 0 {
		return 1
	}
	return 1 / (1 + a/(b+x-1)*math.Pow((alpha+T)/(alpha+tx), r+x))
}

// GammaGammaMean is E[M | p, q, γ, x, m_x]: the expected value of a
// member's purchases given x repeat purchases of average value m_x.
func GammaGammaMean(p, q, gamma, x, mx float64) float64 {
	return p * (gamma + x*mx) / (p*x + q - 1)
}

// hyp2f1 is the Gaussian hypergeometric function for |z| < 1, summed
// until the terms vanish.
func hyp2f1(a, b, c, z float64) float64 {
	sum, term := 1.0, 1.0
	for j := 0.0; j < 10000; j++ {
		term *= (a + j) * (b + j) / ((c + j) * (j + 1)) * z
		sum += term
		if math.Abs(term) < 1e-14*math.Abs(sum) {
			break
		}
	}
	return sum
}

func ltvFunctions() cel.EnvOption {
	d := cel.DoubleType
	num := func(args []ref.Val) ([]float64, bool) {
		out := make([]float64, len(args))
		for i, a := range args {
			v, ok := a.Value().(float64)
			if !ok {
				return nil, false
			}
			out[i] = v
		}
		return out, true
	}
	bad := types.NewErr("model function arguments must be doubles")
	return cel.Lib(lib{opts: []cel.EnvOption{
		cel.Function("bgnbd_expected", cel.Overload("bgnbd_expected_8_double",
			[]*cel.Type{d, d, d, d, d, d, d, d}, d, cel.FunctionBinding(func(args ...ref.Val) ref.Val {
				v, ok := num(args)
				if !ok {
					return bad
				}
				return types.Double(BGNBDExpected(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]))
			}))),
		cel.Function("bgnbd_p_alive", cel.Overload("bgnbd_p_alive_7_double",
			[]*cel.Type{d, d, d, d, d, d, d}, d, cel.FunctionBinding(func(args ...ref.Val) ref.Val {
				v, ok := num(args)
				if !ok {
					return bad
				}
				return types.Double(BGNBDPAlive(v[0], v[1], v[2], v[3], v[4], v[5], v[6]))
			}))),
		cel.Function("gamma_gamma_mean", cel.Overload("gamma_gamma_mean_5_double",
			[]*cel.Type{d, d, d, d, d}, d, cel.FunctionBinding(func(args ...ref.Val) ref.Val {
				v, ok := num(args)
				if !ok {
					return bad
				}
				return types.Double(GammaGammaMean(v[0], v[1], v[2], v[3], v[4]))
			}))),
	}})
}

type lib struct{ opts []cel.EnvOption }

func (l lib) CompileOptions() []cel.EnvOption     { return l.opts }
func (l lib) ProgramOptions() []cel.ProgramOption { return nil }
