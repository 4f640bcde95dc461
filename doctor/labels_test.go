package doctor

import (
	"strings"
	"testing"
)

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"nginx", "nginx", 0},
		{"ngnix", "nginx", 1}, // transposition
		{"nginxx", "nginx", 1},
		{"ngin", "nginx", 1},
		{"Nginx", "nginx", 1},
		{"redis", "nginx", 5},
		{"", "abc", 3},
	} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestNearMiss(t *testing.T) {
	sel := map[string]string{"app": "nginx"}
	for _, tc := range []struct {
		name   string
		sel    map[string]string
		labels map[string]string
		near   bool
		detail string
	}{
		{"value typo", sel, map[string]string{"app": "ngnix"}, true, "label app=ngnix is a typo away from selector app=nginx"},
		{"value case", sel, map[string]string{"app": "Nginx"}, true, "differs from selector app=nginx only in case"},
		{"key typo", sel, map[string]string{"ap": "nginx"}, true, "label ap=nginx has a key a typo away from selector app=nginx"},
		{"key case", sel, map[string]string{"App": "nginx"}, true, "label App=nginx has a key a typo away"},
		{"swapped", sel, map[string]string{"nginx": "app"}, true, "label nginx=app has key and value swapped"},
		{"unrelated", sel, map[string]string{"app": "redis"}, false, ""},
		{"no labels", sel, nil, false, ""},
		{"exact", sel, map[string]string{"app": "nginx"}, false, ""},
		{"one of two keys off", map[string]string{"app": "web", "tier": "frontend"},
			map[string]string{"app": "web", "tier": "frontnd"}, true, "label tier=frontnd is a typo away from selector tier=frontend"},
		{"one of two keys missing", map[string]string{"app": "web", "tier": "frontend"},
			map[string]string{"app": "web"}, true, "label tier is missing (selector wants tier=frontend)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, ok := nearMiss("p", tc.sel, tc.labels)
			if ok != tc.near {
				t.Fatalf("nearMiss = %v (%v), want %v", ok, m.Near, tc.near)
			}
			if tc.detail != "" && !strings.Contains(strings.Join(m.Near, "\n"), tc.detail) {
				t.Errorf("details %q do not contain %q", m.Near, tc.detail)
			}
		})
	}
}
